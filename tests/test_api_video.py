"""`duet_jax.load_llava` on a Video-LLaVA dir: the VideoLlava handle's pre-processing,
logits and greedy generation against HF `VideoLlavaForConditionalGeneration`."""
import numpy as np
import pytest
import torch
from PIL import Image

import duet_jax
from duet_jax.api import VideoLlava
from duet_jax.data.conversation import build_video_prompt
from duet_jax.data.frames import load_frames
from tests.helpers.tiny_hf import assert_valid_rows_close, hf_logits
from tests.helpers.tiny_video import build_tiny_video_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_video_checkpoint(str(tmp_path_factory.mktemp("vapi") / "tiny"))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    for k in range(11):          # frame k is grey level 20k: which frames are picked is readable
        Image.new("RGB", (36, 30), (20 * k,) * 3).save(root / f"img{k}.png")
    return str(root)


def test_load_dispatches_and_encodes_hf_format(ckpt, frames_dir):
    from transformers import AutoTokenizer, VideoLlavaImageProcessor
    model = duet_jax.load_llava(ckpt)
    assert isinstance(model, VideoLlava) and model.config.num_frames == 8
    batch = model.encode(["what happens?"], videos=[frames_dir])
    ids = batch["input_ids"][0]
    cfg = model.config
    assert (ids == cfg.video_token_index).sum() == cfg.video_seq_length == 8 * 5
    # the placeholder is expanded in place of HF's single <video> token
    tok = AutoTokenizer.from_pretrained(ckpt)
    hf_ids = tok(build_video_prompt("what happens?", "video")).input_ids
    at = hf_ids.index(cfg.video_token_index)
    np.testing.assert_array_equal(ids[:at], hf_ids[:at])
    assert batch["pixel_values_videos"].shape == (1, 8, 3, 28, 28)
    # frames: linspace(0, 10, 8) -> 0 1 2 4 5 7 8 10, each through the HF image processor
    picked = [int(f.getpixel((0, 0))[0]) // 20 for f in load_frames(frames_dir, 8)]
    assert picked == [0, 1, 2, 4, 5, 7, 8, 10]
    proc = VideoLlavaImageProcessor.from_pretrained(ckpt)
    want = proc(images=load_frames(frames_dir, 8), return_tensors="np",
                return_legacy_image_output=False)["pixel_values"]
    np.testing.assert_allclose(batch["pixel_values_videos"][0], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("media", ["video", "image"])
def test_logits_and_greedy_generation_match_hf(ckpt, frames_dir, media):
    from transformers import VideoLlavaForConditionalGeneration
    model = duet_jax.load_llava(ckpt)
    hf = VideoLlavaForConditionalGeneration.from_pretrained(ckpt, attn_implementation="eager").eval()
    prompts = ["what is the man doing?", "how many dog"]
    if media == "video":
        rng = np.random.default_rng(0)
        batch = model.encode(prompts, videos=[frames_dir, rng.integers(0, 255, (9, 20, 20, 3))])
        key = "pixel_values_videos"
    else:
        batch = model.encode(prompts, images=[Image.open(f"{frames_dir}/img3.png"),
                                              Image.open(f"{frames_dir}/img9.png")])
        key = "pixel_values"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref = hf_logits(hf, np.asarray(ids, np.int64), mask, **{key: batch[key]})
    ours = np.asarray(model.logits(ids, attention_mask=mask, **{key: batch[key]}))
    assert_valid_rows_close(ours, ref, mask)
    out = model.generate_batch(batch, max_new_tokens=5)
    for b in range(len(prompts)):       # HF one sample at a time (no padding)
        n = int(mask[b].sum())
        with torch.no_grad():
            gen = hf.generate(input_ids=torch.tensor(ids[b:b + 1, :n], dtype=torch.long),
                              **{key: torch.tensor(batch[key][b:b + 1])}, max_new_tokens=5,
                              do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        want = gen[0, n:].numpy()
        got = np.asarray(out.tokens[b, :int(out.lengths[b])])
        np.testing.assert_array_equal(got, want[:len(got)])
        assert len(got) == len(want)


def test_bad_input_fails_with_one_line(ckpt, frames_dir):
    model = duet_jax.load_llava(ckpt)
    batch = model.encode(["q"], videos=[frames_dir])
    with pytest.raises(ValueError, match="expected \\[B, 8, 3, H, W\\]"):
        model.logits(batch["input_ids"], pixel_values_videos=batch["pixel_values_videos"][:, :4])
    with pytest.raises(ValueError, match="pass exactly one of pixel_values"):
        model.logits(batch["input_ids"])
    with pytest.raises(ValueError, match="all-image or all-video"):
        model.encode(["q"], images=[None], videos=[frames_dir])
    with pytest.raises(ValueError, match="PyAV/decord"):
        model.encode(["q"], videos=[f"{frames_dir}/clip.mp4"])
    with pytest.raises(ValueError, match="dominant=160 exceeds"):
        model.generate(["q"], videos=[frames_dir], reduction="videollava-duet-960")
