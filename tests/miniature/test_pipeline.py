"""The whole miniature pipeline at toy scale: data -> tower -> train.py stages -> eval -> tables.

Everything is real (the same code `make demo` runs), only small: 8 training
images, a few steps per stage, 4 + 3 + 8 test questions, the unreduced model
and one DUET preset (plus the DUET-trained arm).
"""
from __future__ import annotations

import dataclasses
import json
import os

from duet_jax.miniature.dataset import DataConfig
from duet_jax.miniature.evaluate import BLIND
from duet_jax.miniature.pipeline import PipelineConfig, export_pretrained, run
from duet_jax.miniature.tower import TowerConfig

TOY = DataConfig(seed=5, train_images=8, val_pope_per_split=1, val_textvqa=1, val_gqa=1,
                 test_pope_per_split=2, test_textvqa=3, test_gqa=4)
# Narrow layers compile and run fast; the LM keeps 4 layers so the DUET boundaries
# [16, 24] of 32 still scale to [2, 3]. The tests run on 8 simulated devices.
SMALL = ["model.random.vision_hidden_size=32", "model.random.vision_intermediate_size=64",
         "model.random.vision_layers=2", "model.random.text_hidden_size=32",
         "model.random.text_intermediate_size=64", "model.random.tokenizer_vocab_size=400",
         "global_batch_size=8", "micro_batch_size=8", "checkpoint.async_save=false",
         "data.num_threads=0"]


def test_toy_pipeline_end_to_end(tmp_path):
    cfg = PipelineConfig(
        workdir=str(tmp_path / "work"), out=str(tmp_path / "out"), data=TOY,
        tower=TowerConfig(steps=2, batch_size=4, images=TOY.train_images),
        from_scratch=True, in_process=True, quiet_training=True, batch_size=4, save_kept=1,
        methods=("DUET",), budgets=(64,),
        pretrain_overrides=(*SMALL, "max_steps=2"), finetune_overrides=(*SMALL, "max_steps=1"))
    lines = []
    result = run(cfg, log=lines.append)

    results = result["results"]
    assert set(results) == {"unreduced", BLIND, "mini-duet-64", "trained-mini-duet-64"}
    for name, r in results.items():
        for benchmark in ("pope", "textvqa", "gqa"):
            assert 0.0 <= r["scores"][benchmark] <= 100.0, (name, benchmark)
        assert r["seconds"] > 0
    # Answer files in the official format, one line per question, for every run.
    answers = os.path.join(cfg.workdir, "eval", "finetune-full", "answers", "mini-duet-64",
                           "pope.jsonl")
    with open(answers) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 3 * TOY.test_pope_per_split
    assert {"question_id", "prompt", "text", "answer_id", "model_id"} <= set(rows[0])
    # The blind control asks the same questions, each beside another question's image.
    eval_dir = os.path.join(cfg.workdir, "eval", "finetune-full")
    for benchmark in ("pope", "textvqa", "gqa"):
        own = [json.loads(x) for x in open(os.path.join(cfg.workdir, "data", "test", benchmark,
                                                        "questions.jsonl"))]
        other = [json.loads(x) for x in open(os.path.join(eval_dir, "other_image",
                                                          f"{benchmark}.jsonl"))]
        assert [q["question_id"] for q in own] == [q["question_id"] for q in other]
        assert sorted(q["image"] for q in own) == sorted(q["image"] for q in other)
        assert all(a["image"] != b["image"] for a, b in zip(own, other))
    assert "another's image" in result["inference_table"]
    # Every run is also scored per kind of question, and the control table compares them.
    assert all(r["categories"]["TextVQA"]["n"] == TOY.test_textvqa for r in results.values())
    assert result["reading_table"].splitlines()[0].startswith("What the unreduced model reads")
    # ... and every difference the tables show gets its bootstrap interval.
    assert "DUET 64 - unreduced" in result["spread_table"]
    assert "DUET trained - inference-only" in result["spread_table"]
    with open(result["report"]) as f:
        written = f.read()
    assert "per kind of question" in written and "How sure each difference is" in written
    # The text-only stage, stage 1 and both fine-tuning arms ran train.py's loop.
    assert os.path.isdir(os.path.join(cfg.workdir, "runs", "text", "final"))
    for stage in ("pretrain", "finetune-full", "finetune-duet"):
        assert os.path.isdir(result["training"][stage]["final"])
    assert "unreduced" in result["inference_table"] and "DUET" in result["inference_table"]
    assert "trained with DUET" in result["trained_table"]
    assert os.path.isfile(result["plot"]) and os.path.isfile(result["report"])
    kept = os.path.join(result["kept_dir"], "mini-duet-64")
    assert len(os.listdir(kept)) == 1 and os.listdir(kept)[0].endswith(".png")

    # A second run is served from the caches: no stage retrains, nothing re-evaluates.
    again = run(cfg, log=lines.append)
    assert all(again["training"][s]["skipped"] for s in ("pretrain", "finetune-full",
                                                         "finetune-duet"))
    assert again["results"] == json.loads(json.dumps(results))

    # `make demo`'s path: stages 0-1 from an exported (shipped) checkpoint, stage 2 here.
    shipped = export_pretrained(cfg, str(tmp_path / "shipped"))
    with open(os.path.join(shipped, "provenance.json")) as f:
        provenance = json.load(f)
    assert (provenance["text_steps"], provenance["pretrain_steps"]) == (2, 2)
    demo = run(dataclasses.replace(cfg, from_scratch=False, pretrained=shipped),
               log=lines.append)
    assert demo["training"]["pretrain"]["final"] == shipped
    assert not any(demo["training"][s]["skipped"] for s in ("finetune-full", "finetune-duet"))
    assert set(demo["results"]) == set(results)
