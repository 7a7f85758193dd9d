"""`python -m duet_jax.tiny`: a random LLaVA-1.5-shaped HF checkpoint that every llava15-*
preset fits, which transformers and `duet_jax.load_llava` load to the same logits, with a
real tokenizer; its POPE sample scores with the official rules; a model directory without
tokenizer files says so."""
import json
import os
import shutil

import numpy as np
import pytest

from duet_jax.reduction import PRESETS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from duet_jax.tiny import main

    root = tmp_path_factory.mktemp("tiny")
    assert main(["--out", str(root / "llava-tiny"), "--pope", str(root / "pope")]) == 0
    return root


def test_layout_and_every_llava15_preset_fits(tiny):
    import duet_jax

    ckpt = tiny / "llava-tiny"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
            "tokenizer.model", "tokenizer_config.json"} <= set(os.listdir(ckpt))
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    model = duet_jax.load_llava(str(ckpt))
    assert model.config.image_seq_length == 576 and model.config.text.num_hidden_layers == 32
    presets = [name for name in PRESETS if name.startswith("llava15-")]
    assert len(presets) >= 12
    for name in presets:
        if "cdpruner" in name:   # needs a CLIP text tower, which the tiny checkpoint lacks
            with pytest.raises(ValueError, match="--clip-text-tower DIR"):
                model.reduction(name)
            continue
        assert model.reduction(name) is not None, name
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_index
    assert tok.decode(tok("What is in the image?").input_ids, skip_special_tokens=True) == \
        "What is in the image?"


def test_transformers_and_duet_jax_agree(tiny):
    from transformers import LlavaForConditionalGeneration

    import duet_jax
    from tests.helpers.tiny_hf import hf_logits

    ckpt = str(tiny / "llava-tiny")
    model = duet_jax.load_llava(ckpt)
    image = sorted((tiny / "pope" / "val2014").iterdir())[0]
    batch = model.encode(["What is in the image?"], [str(image)])
    ours = np.asarray(model.logits(batch["input_ids"], batch["pixel_values"],
                                   batch["attention_mask"]))
    hf = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
    ref = hf_logits(hf, np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]),
                    pixel_values=batch["pixel_values"])
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-4
    assert ref.std() > 0.1      # not a degenerate init


def test_pope_sample_scores(tiny, tmp_path):
    from duet_jax.evaluation import score_benchmark

    pope = tiny / "pope"
    questions = [json.loads(line) for line in open(pope / "llava_pope_test.jsonl")]
    assert len(questions) == 6 and all((pope / "val2014" / q["image"]).is_file()
                                       for q in questions)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q["question_id"], "prompt": q["text"],
                                           "text": "Yes", "answer_id": "a", "model_id": "m",
                                           "metadata": {}}) + "\n" for q in questions))
    block = score_benchmark("pope", str(answers), str(pope / "coco"),
                            str(pope / "llava_pope_test.jsonl"))
    assert block["per_split"]["random"]["yes_ratio"] == 100.0
    assert 0 < block["acc_mean"] < 100      # half the labels are "no"


def test_no_tokenizer_files_says_so(tiny, tmp_path):
    import duet_jax

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(tiny / "llava-tiny" / name, bare / name)
    model = duet_jax.load_llava(str(bare))
    with pytest.raises(FileNotFoundError) as e:
        model.tokenizer
    assert str(e.value) == (f"no tokenizer files in {bare} (expected tokenizer.json or "
                            "tokenizer.model); copy them from the source checkpoint")


def test_existing_output_is_one_line_and_exit_2(tiny, capsys):
    from duet_jax.tiny import main

    assert main(["--out", str(tiny / "llava-tiny")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "already exists" in err[0]


def test_bad_sizes_and_pope_path_are_refused_before_writing(tmp_path, capsys):
    """--pope is checked before the checkpoint is written (not after, leaving it behind);
    a zero layer count is a usage error, not a model with no layers."""
    from duet_jax.tiny import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["--out", str(tmp_path / "t"), "--pope", str(blocker / "pope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {blocker}/pope: lies under the file {blocker}; --pope must name a "
                   "path in a folder; no checkpoint was written"]
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "t"), "--text-layers", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: argument --text-layers: '0' is not a positive integer")
    assert os.listdir(tmp_path) == ["a-file"]
