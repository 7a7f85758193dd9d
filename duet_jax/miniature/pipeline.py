"""The whole miniature reproduction: data -> staged training -> evaluation -> tables.

    python -m duet_jax.miniature.pipeline [--workdir .cache/miniature] [--out .cache/demo]

Every step is cached under `workdir` (data set by its DataConfig, each training
stage by its exact train.py command, each evaluation by the model it scored),
so a second run only re-prints the tables. `out` receives report.md,
accuracy_vs_tokens.png and the kept-token pictures (kept/<reduction>/*.png).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Tuple

from duet_jax.miniature import evaluate, presets, report, training
from duet_jax.miniature.dataset import DataConfig, generate
from duet_jax.miniature.tower import TowerConfig
from duet_jax.resources import bundled_config, package_path

SHIPPED = package_path("miniature", "pretrained")
# The stages' recipes, bundled with the package (duet_jax/configs/); the paths come by --set.
CONFIGS = {"text": bundled_config("miniature-text.yaml"),
           "pretrain": bundled_config("miniature.yaml"),
           "finetune-full": bundled_config("miniature-finetune.yaml"),
           "finetune-duet": bundled_config("miniature-finetune-duet.yaml")}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    workdir: str = os.path.join(".cache", "miniature")
    out: str = os.path.join(".cache", "demo")
    data: DataConfig = DataConfig()
    tower: TowerConfig = TowerConfig()
    from_scratch: bool = False      # False: start stage 2 from the shipped pretrained miniature
    pretrained: str = SHIPPED
    in_process: bool = False        # train in this process (tests) instead of `python train.py`
    methods: Tuple[str, ...] = presets.METHODS
    budgets: Tuple[int, ...] = presets.BUDGETS
    split: str = "test"
    trained_budget: int = 64
    batch_size: int = 16
    save_kept: int = 2              # kept-token pictures: the first N TextVQA questions
    pretrain_overrides: Tuple[str, ...] = ()
    finetune_overrides: Tuple[str, ...] = ()
    quiet_training: bool = False


def _abs(path: str) -> str:
    """A workdir / out path given on the command line: relative to the working directory."""
    return os.path.abspath(path)


def model_depths(checkpoint: str) -> Tuple[int, int]:
    """(LM layers, vision-tower layers) of a checkpoint: what the presets scale to."""
    from duet_jax.models.config import LlavaConfig
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
        cfg = LlavaConfig.from_hf(json.load(f))
    return cfg.text.num_hidden_layers, cfg.vision.num_hidden_layers


def check_trained_reduction(config_path: str, budget: int, num_layers: int):
    """The DUET-training YAML must hold exactly presets.duet(budget, L) (bar the name)."""
    from duet_jax.reduction import from_dict
    from duet_jax.training.config import read_yaml
    written = from_dict(read_yaml(config_path)["reduction"])
    expected = presets.duet(budget, num_layers)
    if (written.stage1, written.stage2) != (expected.stage1, expected.stage2):
        raise ValueError(f"{config_path}: reduction {written.to_dict()} is not the miniature "
                         f"DUET-{budget} preset {expected.to_dict()}; make them agree")
    return expected


def _stage_log(name: str, r: dict, log) -> None:
    run_dir = os.path.dirname(r["final"])
    steps = len(training.read_metrics(run_dir, "tower_metrics.jsonl" if name == "tower"
                                      else "metrics.jsonl"))
    what = "cached" if r["skipped"] else f"{r['seconds']:.0f} s"
    step = f", {r['step_s']:.2f} s/step" if r.get("step_s") else ""
    log(f"  {name}: {steps} steps{step} ({what})")


def questions_id(cfg: PipelineConfig) -> str:
    """The training data's identity: a training stage reruns when its questions change."""
    return training.digest(dataclasses.asdict(cfg.data))


def pretrained_base(cfg: PipelineConfig, data_dir: str, data: list, log) -> dict:
    """Stage 0 (tower), 0b (text only) and 1 (train.py, tower frozen) from scratch, cached."""
    from duet_jax.miniature.tower import pretrain_tower
    runs = os.path.join(_abs(cfg.workdir), "runs")
    config = CONFIGS["pretrain"]
    # The tower sees the training scenes, not their questions.
    data_id = training.digest({"seed": cfg.data.seed, "train_images": cfg.data.train_images})
    tower_dir = os.path.join(runs, "tower")
    tcfg = dataclasses.replace(cfg.tower, data_seed=cfg.data.seed,
                               images=min(cfg.tower.images, cfg.data.train_images))
    with open(config, encoding="utf-8") as f:
        tower_id = {"tower": dataclasses.asdict(tcfg), "config": f.read(),
                    "overrides": data + list(cfg.pretrain_overrides), "data": data_id}
    log("  stage 0: vision tower alone (duet_jax/miniature/tower.py)")
    tower = training.cached(tower_dir, tower_id, lambda: pretrain_tower(
        config, data + list(cfg.pretrain_overrides), tower_dir, tcfg, log=log))
    _stage_log("tower", dict(tower, step_s=None), log)
    previous = tower
    stages = (("text", "stage 0b: the LM alone on the scenes' captions as text",
               [f"data.train_json={os.path.join(data_dir, 'text.json')}",
                f"data.image_folder={data_dir}"]),
              ("pretrain", "stage 1: the pretrained tower frozen, projector + LM, full tokens",
               data))
    for name, what, stage_data in stages:
        log("  " + what)
        previous = training.run_stage(
            CONFIGS[name], os.path.join(runs, name),
            stage_data + [f"model.checkpoint={previous['final']}"] + list(cfg.pretrain_overrides),
            log=log, quiet=cfg.quiet_training, in_process=cfg.in_process,
            upstream=training.digest([previous["digest"], questions_id(cfg)]))
        _stage_log(name, previous, log)
    return previous


def train_all(cfg: PipelineConfig, data_dir: str, log) -> dict:
    runs = os.path.join(_abs(cfg.workdir), "runs")
    data = [f"data.train_json={os.path.join(data_dir, 'train.json')}",
            f"data.image_folder={data_dir}"]
    out = {}
    shipped = os.path.join(cfg.pretrained, "model.safetensors")
    log("[2/4] training (cached under " + os.path.join(cfg.workdir, "runs") + ")")
    if not cfg.from_scratch and os.path.isfile(shipped):
        log(f"  stages 0-1: the pretrained miniature shipped in {training._shown(cfg.pretrained)} "
            "(rebuild it with --from-scratch; see its provenance.json)")
        out["pretrain"] = {"final": cfg.pretrained, "skipped": True, "seconds": None,
                           "step_s": None, "digest": training.digest(shipped)}
    else:
        out["pretrain"] = pretrained_base(cfg, data_dir, data, log)
    ckpt = [f"model.checkpoint={out['pretrain']['final']}"]
    log("  stage 2: tower frozen, projector + LM fine-tuned, at full tokens and with DUET")
    for stage in ("finetune-full", "finetune-duet"):
        out[stage] = training.run_stage(CONFIGS[stage], os.path.join(runs, stage),
                                        data + ckpt + list(cfg.finetune_overrides), log=log,
                                        quiet=cfg.quiet_training, in_process=cfg.in_process,
                                        upstream=training.digest([out["pretrain"]["digest"],
                                                                  questions_id(cfg)]))
        _stage_log(stage, out[stage], log)
    return out


def evaluate_all(cfg: PipelineConfig, data_dir: str, trained: dict, num_layers: int,
                 vision_layers: int, log):
    eval_root = os.path.join(_abs(cfg.workdir), "eval")
    table_presets = presets.inference_presets(num_layers, vision_layers, cfg.methods,
                                              cfg.budgets)
    configs = {"unreduced": None, evaluate.BLIND: None}
    for cfgs in table_presets.values():
        configs.update({c.name: c for _, c in cfgs if c is not None})
    duet_cfg = check_trained_reduction(CONFIGS["finetune-duet"], cfg.trained_budget,
                                       num_layers)
    trained_name = f"trained-{duet_cfg.name}"
    results = {}
    for stage, wanted in (("finetune-full", configs), ("finetune-duet", {trained_name: duet_cfg})):
        out_dir = os.path.join(eval_root, stage)
        log(f"  model {stage}: {len(wanted)} reduction(s) x {len(evaluate.BENCHMARKS)} benchmarks")
        results.update(evaluate.evaluate_model(trained[stage]["final"], wanted, data_dir,
                                               cfg.split, out_dir, batch_size=cfg.batch_size,
                                               save_kept=cfg.save_kept,
                                               model_digest=trained[stage]["digest"], log=log))
    return results, table_presets, duet_cfg.name, trained_name


def copy_pictures(cfg: PipelineConfig, names) -> str:
    """Kept-token pictures of the reduced runs of the baseline model -> out/kept/."""
    src_root = os.path.join(_abs(cfg.workdir), "eval", "finetune-full", "kept")
    dst_root = os.path.join(_abs(cfg.out), "kept")
    shutil.rmtree(dst_root, ignore_errors=True)
    for name in names:
        src = os.path.join(src_root, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst_root, name))
    return dst_root


def run(cfg: PipelineConfig = PipelineConfig(), log: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    data_dir = os.path.join(_abs(cfg.workdir), "data")
    log(f"[1/4] synthetic data set ({cfg.data.train_images} training images) -> {data_dir}")
    generate(data_dir, cfg.data)
    trained = train_all(cfg, data_dir, log)
    num_layers, vision_layers = model_depths(trained["finetune-full"]["final"])
    log(f"[3/4] evaluation on the {cfg.split} split (eval.py's runner + official-rule scorers)")
    results, table_presets, duet_name, trained_name = evaluate_all(cfg, data_dir, trained,
                                                                   num_layers, vision_layers, log)
    log("[4/4] tables")
    for method, cfgs in table_presets.items():
        for _, c in cfgs:
            log(f"  {presets.describe(c, num_layers)}" if c else f"  {method}: unreachable")
    inference = report.inference_table(results, table_presets, "unreduced", num_layers,
                                       presets.table_notes(table_presets, num_layers))
    reading = report.reading_table(results, "unreduced")
    duet_inference = presets.duet(cfg.trained_budget, num_layers).name
    trained_tab = report.trained_table(results, "unreduced", duet_inference, trained_name,
                                       cfg.trained_budget, trained)
    spread = report.spread_table(results, table_presets, "unreduced",
                                 (trained_name, duet_inference))
    out = _abs(cfg.out)
    os.makedirs(out, exist_ok=True)
    plot_path = os.path.join(out, "accuracy_vs_tokens.png")
    report.plot(plot_path, results, table_presets, "unreduced", trained_name,
                cfg.trained_budget, num_layers)
    kept = copy_pictures(cfg, [c.name for cfgs in table_presets.values() for _, c in cfgs if c])
    report.write_report(os.path.join(out, "report.md"), [inference, reading, trained_tab, spread])
    seconds = time.perf_counter() - t0
    return {"inference_table": inference, "reading_table": reading,
            "trained_table": trained_tab, "spread_table": spread, "results": results,
            "training": trained, "plot": plot_path, "kept_dir": kept,
            "report": os.path.join(out, "report.md"), "seconds": seconds,
            "duet_name": duet_name, "num_layers": num_layers}


def export_pretrained(cfg: PipelineConfig, dst: str) -> str:
    """Copy stage 1's llava-hf export (a few MB) + provenance.json to `dst` (the shipped
    checkpoint is made this way: `--from-scratch --export-pretrained <dir>`)."""
    runs = os.path.join(_abs(cfg.workdir), "runs")
    src = os.path.join(runs, "pretrain", "hf")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} not found; run with --from-scratch first")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    done = {name: training._load(os.path.join(runs, name, training.DONE)) or {}
            for name in ("tower", "text", "pretrain")}
    provenance = {
        "made_by": "python -m duet_jax.miniature.pipeline --from-scratch --export-pretrained",
        "data": dataclasses.asdict(cfg.data), "tower": dataclasses.asdict(cfg.tower),
        **{f"{name}_seconds": d.get("seconds") for name, d in done.items()},
        "text_steps": len(training.read_metrics(os.path.join(runs, "text"))),
        "pretrain_steps": len(training.read_metrics(os.path.join(runs, "pretrain"))),
        "text_identity": done["text"].get("identity"),
        "pretrain_identity": done["pretrain"].get("identity")}
    with open(os.path.join(dst, "provenance.json"), "w", encoding="utf-8") as f:
        json.dump(provenance, f, indent=1)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=PipelineConfig.workdir)
    p.add_argument("--out", default=PipelineConfig.out)
    p.add_argument("--from-scratch", action="store_true",
                   help="also train stages 0-1 here instead of using the shipped checkpoint")
    p.add_argument("--export-pretrained", metavar="DIR",
                   help="after the run, copy the stage-1 model to DIR (with --from-scratch)")
    args = p.parse_args(argv)
    cfg = PipelineConfig(workdir=args.workdir, out=args.out, from_scratch=args.from_scratch)
    result = run(cfg)
    print(result["inference_table"])
    print()
    print(result["reading_table"])
    print()
    print(result["trained_table"])
    print()
    print(result["spread_table"])
    print(f"\nplot: {result['plot']}\nkept-token pictures: {result['kept_dir']}\n"
          f"report: {result['report']}\ntotal {result['seconds']:.0f} s")
    if args.export_pretrained:
        print(f"pretrained miniature exported to {export_pretrained(cfg, args.export_pretrained)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
