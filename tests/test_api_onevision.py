"""`duet_jax.load_llava` on a LLaVA-OneVision checkpoint: the registry picks the family, image
prompts tokenize exactly as transformers' LlavaOnevisionProcessor does, logits and greedy
answers equal HF PyTorch for images and videos, and the checkpoint converts both ways
bit-exactly."""
import json
import os

import numpy as np
import pytest
import torch

import duet_jax
from duet_jax.data.resolution_buckets import resize
from tests.helpers.tiny_next import random_images
from tests.helpers.tiny_onevision import SIZES, build_tiny_onevision_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_onevision_checkpoint(str(tmp_path_factory.mktemp("ov") / "tiny-ov"))


@pytest.fixture(scope="module")
def hf(ckpt):
    from transformers import LlavaOnevisionForConditionalGeneration
    return LlavaOnevisionForConditionalGeneration.from_pretrained(
        ckpt, attn_implementation="eager").eval()


def test_images_encode_logits_generate_match_transformers(ckpt, hf):
    """ids = the tokenizer's ids of the prompt with `<image>` repeated HF's block length
    (LlavaOnevisionProcessor itself needs torchvision for its video half)."""
    from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil
    model = duet_jax.load_llava(ckpt)
    assert type(model).__name__ == "LlavaOnevision" and model.media == ("image", "video")
    images = random_images(SIZES[:2], seed=4)
    prompts = ["What is in this picture?", "Describe the image."]
    batch = model.encode(prompts, images)
    tok, improc = AutoTokenizer.from_pretrained(ckpt), LlavaOnevisionImageProcessorPil.from_pretrained(ckpt)
    answers = model.generate(prompts, images, max_new_tokens=5)
    image_id = model.config.image_token_index
    for b, (p, im) in enumerate(zip(prompts, images)):
        im = resize(im, model.bucket_size(im.height, im.width))
        px = improc(im, return_tensors="pt")
        with torch.no_grad():
            block = hf.model.get_image_features(px["pixel_values"], px["image_sizes"]).pooler_output[0]
        ids = []
        for t in tok(model.full_prompt(p))["input_ids"]:
            ids += [t] * (block.shape[0] if t == image_id else 1)
        ids = torch.tensor([ids])
        n = int(batch["attention_mask"][b].sum())
        np.testing.assert_array_equal(batch["input_ids"][b, :n], ids[0].numpy())
        np.testing.assert_array_equal(batch["pixel_values"].sizes[b], px["image_sizes"][0].numpy())
        with torch.no_grad():
            ref = hf(input_ids=ids, pixel_values=px["pixel_values"],
                     image_sizes=px["image_sizes"]).logits[0].numpy()
            out = hf.generate(input_ids=ids, pixel_values=px["pixel_values"],
                              image_sizes=px["image_sizes"], max_new_tokens=5,
                              do_sample=False)[0, n:]
        logits = np.asarray(model.logits(batch["input_ids"][b:b + 1, :n],
                                         batch["pixel_values"].pixels[b:b + 1],
                                         image_sizes=[batch["pixel_values"].sizes[b]]))[0]
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
        assert answers[b] == tok.decode(out, skip_special_tokens=True).strip()


def test_videos_encode_logits_generate_match_transformers(ckpt, hf):
    model = duet_jax.load_llava(ckpt)
    g = np.random.default_rng(3)
    videos = [(g.random((11, 40, 50, 3)) * 255).astype(np.uint8) for _ in range(2)]
    batch = model.encode(["What happens?", "Describe the video."], videos=videos)
    assert batch["pixel_values_videos"].shape == (2, 8, 3, 56, 56)
    vid = model.config.video_token_index
    assert (batch["input_ids"] == vid).sum(1).tolist() == [8 * 4 + 1] * 2
    answers = model.generate(["What happens?", "Describe the video."], videos=videos,
                             max_new_tokens=4)
    for b in range(2):
        n = int(batch["attention_mask"][b].sum())
        ids = torch.tensor(batch["input_ids"][b:b + 1, :n], dtype=torch.long)
        px = torch.tensor(batch["pixel_values_videos"][b:b + 1])
        with torch.no_grad():
            ref = hf(input_ids=ids, pixel_values_videos=px).logits[0].numpy()
            out = hf.generate(input_ids=ids, pixel_values_videos=px, max_new_tokens=4,
                              do_sample=False)[0, n:]
        logits = np.asarray(model.logits(batch["input_ids"][b:b + 1, :n],
                                         pixel_values_videos=batch["pixel_values_videos"][b:b + 1]))
        np.testing.assert_allclose(logits[0], ref, atol=1e-4, rtol=0)
        assert answers[b] == model.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_convert_both_ways_is_bit_exact(ckpt, tmp_path):
    import convert
    from duet_jax.checkpoints import load_params
    from tests.checkpoints.test_convert import assert_bit_exact
    out, back = str(tmp_path / "jax"), str(tmp_path / "back")
    cfg, _ = load_params(ckpt)
    convert.convert_to_orbax(ckpt, out, progress=False)
    assert load_params(out)[0] == cfg
    from duet_jax.sharding import make_mesh
    model = duet_jax.load_llava(out, mesh=make_mesh(4, 2, 1))     # the marker's family shapes it
    assert type(model).__name__ == "LlavaOnevision"
    assert not model.params["text"]["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.is_fully_replicated  # fsdp
    convert.export_hf(out, back, progress=False)
    assert_bit_exact(ckpt, back)
    with open(os.path.join(back, "config.json")) as f:
        assert json.load(f)["model_type"] == "llava_onevision"


@pytest.mark.parametrize("key, value", [
    ("vision_aspect_ratio", "anyres"),              # no max: not LLaVA-OneVision's rule
    ("vision_aspect_ratio", "pad"),
    ("vision_feature_layer", -7),                   # past the 3-layer tower
    ("vision_feature_layer", [-2, -1]),             # multi-layer features
    ("vision_feature_select_strategy", "default"),  # would drop a patch, SigLIP has no CLS
])
def test_unsupported_config_is_one_line_naming_the_key(ckpt, tmp_path, capsys, key, value):
    import shutil

    from duet_jax.checkpoints import CheckpointError, load_params
    from duet_jax.checkpoints.cli import main
    bad = str(tmp_path / "bad")
    shutil.copytree(ckpt, bad)
    with open(os.path.join(bad, "config.json")) as f:
        config = json.load(f)
    config[key] = value
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match=key):
        load_params(bad)
    assert main(["--src", bad, "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert not os.path.exists(tmp_path / "out")
