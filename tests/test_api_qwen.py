"""`duet_jax.load_qwen25vl` / `load_llava` dispatch: prompt format, pre-processing, logits
and greedy answers against HF PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import duet_jax
from tests.helpers.tiny_qwen import (IMAGE, VEND, VSTART, hf_inputs, images, save_tiny_processor,
                                     tiny_qwen)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen")
    hf = tiny_qwen(text_layers=4)
    hf.save_pretrained(d)
    save_tiny_processor(str(d))
    return hf, str(d)


def test_load_llava_dispatches_and_encodes_the_chat_format(saved):
    hf, path = saved
    model = duet_jax.load_llava(path)
    assert isinstance(model, duet_jax.Qwen25VL)
    batch = model.encode(["What is it?"], [images()[0]])
    ids = batch["input_ids"][0]
    n = int(np.prod(batch["image_grid_thw"][0])) // 4
    text = model.tokenizer.decode(ids[ids != IMAGE])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|vision_end|>What is it?<|im_end|>\n<|im_start|>assistant\n")
    start = int(np.argmax(ids == IMAGE))
    assert ids[start - 1] == VSTART and ids[start + n] == VEND and (ids == IMAGE).sum() == n


def test_container_logits_and_greedy_answer_match_hf(saved):
    hf, path = saved
    model = duet_jax.load_qwen25vl(path)
    batch = model.encode(["Describe."], [images(seed=3)[0]])
    kw = hf_inputs(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"])
    with torch.no_grad():
        ref = hf(**kw).logits.numpy()
        ref_ids = hf.generate(**kw, max_new_tokens=6, do_sample=False, pad_token_id=0)
    got = model.logits(batch["input_ids"], batch["pixel_values"],
                       image_grid_thw=batch["image_grid_thw"])
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=1e-4)
    ref_new = ref_ids[0, batch["input_ids"].shape[1]:].numpy()
    ref_new = ref_new[:np.argmax(ref_new == 2)] if (ref_new == 2).any() else ref_new
    answer = model.generate(["Describe."], [images(seed=3)[0]], max_new_tokens=6)[0]
    assert answer == model.tokenizer.decode(ref_new, skip_special_tokens=True).strip()


def test_presets_run_and_bad_reduction_is_a_clear_error(saved):
    _, path = saved
    model = duet_jax.load_qwen25vl(path)
    for name in ("qwen25vl-duet-160", {"name": "t", "stage1": {"dominant": 6, "contextual": 2,
                                                                "cls_token": False},
                                       "stage2": {"layers": [1, 2], "ratios": [0.5, 0.25],
                                                  "positions": "keep"}}):
        if isinstance(name, str):
            with pytest.raises(ValueError, match="outside"):     # 4-layer LM, layers [14, 21]
                model.generate(["Hi"], [images()[0]], max_new_tokens=2, reduction=name)
            continue
        assert isinstance(model.generate(["Hi"], [images()[0]], max_new_tokens=3, reduction=name)[0], str)
    with pytest.raises(ValueError, match="no CLS"):
        batch = model.encode(["x"], [images()[0]])
        model.logits(batch["input_ids"], batch["pixel_values"], reduction="llava15-duet-192",
                     image_grid_thw=batch["image_grid_thw"])


TINY_DUET = {"name": "t", "stage1": {"dominant": 6, "contextual": 2, "cls_token": False},
             "stage2": {"layers": [1, 2], "ratios": [0.5, 0.25], "positions": "keep"}}


def test_bucketed_images_and_padded_prompts_share_one_program(saved):
    from duet_jax.generation.decode import generate_qwen
    _, path = saved
    model = duet_jax.load_qwen25vl(path)
    sizes = ((90, 130), (84, 170), (80, 150))
    exact = {tuple(model.encode(["x"], [im], bucket=False)["image_grid_thw"][0])
             for im in images(sizes)}
    assert len(exact) == 2                    # two grids, two programs without buckets
    assert len({model.bucket_size(*s) for s in sizes}) == 1
    prompts = ["Hi", "What is in the picture?", "Describe it."]
    before = generate_qwen._cache_size()
    for red in (None, TINY_DUET):
        model.generate(prompts, images(sizes), max_new_tokens=5, reduction=red)
    assert generate_qwen._cache_size() - before == 2          # one per reduction


@pytest.mark.parametrize("red", [None, TINY_DUET])
def test_prompt_padding_does_not_change_the_answer(saved, red):
    _, path = saved
    model = duet_jax.load_qwen25vl(path)
    batch = model.encode(["What is in the picture?"], [images(seed=5)[0]])
    exact = model.generate_batch(batch, max_new_tokens=6, reduction=red)
    padded = model.generate_batch(model.pad_length(batch, 64), max_new_tokens=6, reduction=red)
    assert batch["input_ids"].shape[1] % 64 != 0
    np.testing.assert_array_equal(exact.tokens, padded.tokens)
    np.testing.assert_array_equal(exact.lengths, padded.lengths)


def test_eval_run_on_a_qwen_checkpoint_answers_as_generate_does(saved, tmp_path):
    """eval.py run goes through the handle contract, so a Qwen2.5-VL checkpoint runs the
    image benchmarks (prompts of one resolution bucket batched), reduced or not."""
    import json
    from duet_jax.evaluation import runner
    from duet_jax.evaluation.questions import clean_output
    _, path = saved
    q = tmp_path / "q.jsonl"
    texts = ["Is there a cat?", "Is there a dog?", "Is there a car?"]
    q.write_text("".join(json.dumps({"question_id": i, "image": f"x{i}.png", "text": t,
                                     "category": "random"}) + "\n"
                         for i, t in enumerate(texts)))
    pictures = images(((90, 130), (84, 170), (80, 150)))
    for i, im in enumerate(pictures):
        im.save(tmp_path / f"x{i}.png")
    model = duet_jax.load_llava(path)
    for red in (None, TINY_DUET):
        spec = runner.RunSpec(benchmark="pope", questions=str(q), images=str(tmp_path),
                              answers=str(tmp_path / f"a{red is None}.jsonl"), model_path=path,
                              batch_size=2, max_new_tokens=4,
                              reduction=None if red is None else model.reduction(red))
        runner.run(spec, model)
        got = [json.loads(line)["text"] for line in open(spec.answers)]
        from PIL import Image
        want = model.generate(texts, [Image.open(tmp_path / f"x{i}.png") for i in range(3)],
                              max_new_tokens=4, reduction=red)
        assert got == [clean_output(w, "pope") for w in want]
