"""`duet_jax.load_llava` on a LLaVA-NeXT checkpoint: the same handle as LLaVA-1.5, prompts
tokenized exactly as transformers' LlavaNextProcessor does, logits and greedy answers
equal to HF PyTorch, presets and bad input handled."""
import numpy as np
import pytest
import torch

import duet_jax
from duet_jax.data.resolution_buckets import resize
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from tests.helpers.tiny_next import SIZES, build_tiny_next_checkpoint, random_images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_next_checkpoint(str(tmp_path_factory.mktemp("next") / "tiny-next"))


def test_load_encode_logits_generate_match_transformers(ckpt):
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
    model = duet_jax.load_llava(ckpt)
    assert type(model).__name__ == "LlavaNext"
    images = random_images(SIZES[:2], seed=4)
    prompts = ["What is in this picture?", "Describe the image."]
    batch = model.encode(prompts, images)
    # transformers' own processor builds the same ids from the same full prompts
    proc = LlavaNextProcessor.from_pretrained(ckpt)
    from duet_jax.data.conversation import build_eval_prompt
    hf = LlavaNextForConditionalGeneration.from_pretrained(ckpt, attn_implementation="eager").eval()
    answers = model.generate(prompts, images, max_new_tokens=5)
    for b, (p, im) in enumerate(zip(prompts, images)):
        # encode snaps the image to its canonical size first; HF tiles that image alike
        im = resize(im, model.bucket_size(im.height, im.width))
        enc = proc(text=build_eval_prompt(p), images=im, return_tensors="pt")
        n = int(batch["attention_mask"][b].sum())
        np.testing.assert_array_equal(batch["input_ids"][b, :n], enc["input_ids"][0].numpy())
        np.testing.assert_array_equal(batch["pixel_values"].sizes[b], enc["image_sizes"][0].numpy())
        with torch.no_grad():
            ref = hf(**enc).logits[0].numpy()
            out = hf.generate(**enc, max_new_tokens=5, do_sample=False)[0, n:]
        logits = np.asarray(model.logits(batch["input_ids"][b:b + 1, :n],
                                         batch["pixel_values"].pixels[b:b + 1],
                                         image_sizes=[batch["pixel_values"].sizes[b]]))[0]
        # 1e-4 plus 1e-4 relative: logits reach |3| here and fp32 sums in another order
        # (XLA's vs oneDNN's kernels, which differ between CPUs) move the last bits of
        # the large ones by ~1.2e-4 on some machines; any real error is orders above that
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
        assert answers[b] == proc.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_reduced_generation_and_bad_input(ckpt):
    model = duet_jax.load_llava(ckpt)
    red = ReductionConfig("t", Stage1Config(6, 3, 2), Stage2Config((1,), (0.5,)))
    images = random_images(SIZES[1:3], seed=5)
    out = model.generate(["Describe it.", "What colour?"], images, max_new_tokens=3, reduction=red)
    assert len(out) == 2 and all(isinstance(a, str) for a in out)
    batch = model.encode(["Describe it."], images[:1])
    with pytest.raises(ValueError, match="image_sizes"):
        model.logits(batch["input_ids"], batch["pixel_values"].pixels)
    with pytest.raises(ValueError, match="one image per prompt"):
        model.encode(["a", "b"], [images[0], None])
    with pytest.raises(ValueError, match="dominant"):
        model.logits(batch["input_ids"], batch["pixel_values"], reduction=ReductionConfig(
            "big", Stage1Config(17, 2), None))


def test_images_of_one_canonical_size_share_one_program(ckpt):
    from duet_jax.generation.decode import generate_tokens
    model = duet_jax.load_llava(ckpt)
    sizes = [(30, 150), (33, 160), (28, 145), (31, 152)]
    assert len({model.bucket_size(*s) for s in sizes}) == 1
    exact = model.encode(["a"] * 4, random_images(sizes), bucket=False)["pixel_values"].sizes
    assert len(set(exact)) == 4                 # four programs without buckets
    before = generate_tokens._cache_size()
    for pair, prompt in ((sizes[:2], "What is it?"), (sizes[2:], "Describe the picture, please.")):
        batch = model.encode([prompt] * 2, random_images(pair, seed=7))
        assert len(set(batch["pixel_values"].sizes)) == 1
        length = batch["input_ids"].shape[1]
        assert length <= 256
        batch = {k: (np.pad(v, ((0, 0), (0, 256 - length))) if getattr(v, "ndim", 0) == 2 else v)
                 for k, v in batch.items()}      # eval.py's length bucket
        model.generate_batch(batch, max_new_tokens=7)
    assert generate_tokens._cache_size() - before == 1


def test_eval_run_batches_one_canonical_size_together(ckpt, tmp_path):
    import json
    from duet_jax.evaluation import runner
    model = duet_jax.load_llava(ckpt)
    sizes = [(30, 150), (100, 100), (33, 160)]      # canonical sizes a, b, a
    rows = []
    for i, im in enumerate(random_images(sizes, seed=2)):
        im.save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"question_id": i, "image": f"{i}.png", "category": "random",
                                "text": "Is there a cat in the image?"}))
    (tmp_path / "q.jsonl").write_text("\n".join(rows) + "\n")
    spec = runner.RunSpec(benchmark="pope", questions=str(tmp_path / "q.jsonl"),
                          images=str(tmp_path), answers=str(tmp_path / "a.jsonl"),
                          batch_size=2, max_new_tokens=2, model_path=ckpt)
    keys = [model.shape_key(str(tmp_path / f"{i}.png")) for i in range(3)]
    assert keys[0] == keys[2] != keys[1]
    runner.run(spec, model)
    answers = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert sorted(a["question_id"] for a in answers) == [0, 1, 2]
