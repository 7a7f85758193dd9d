"""The training run: set up, resume, step, log, checkpoint, export.

`train(cfg)` is what `python train.py` runs. Per optimizer step it takes
`global_batch_size / micro_batch_size` micro-batches from the data iterator,
fixes the step's static layout on the host, runs one jitted step (all
micro-batches, one update), logs a metrics line and saves a checkpoint every
`checkpoint.save_every` steps and at the end. A run whose output directory
holds checkpoints resumes from the newest one.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Optional

import jax
import yaml

from duet_jax.checkpoints.orbax_io import cast_dtype
from duet_jax.data.conversation import get_template
from duet_jax.data.llava_json import SampleEncoder, load_records
from duet_jax.data.images import load_image_processor
from duet_jax.data.loader import LoaderConfig, TrainBatchIterator
from duet_jax.models.llava import LlavaModel
from duet_jax.sharding import make_mesh
from duet_jax.training import build
from duet_jax.training.batching import (agree, check_batch_divides, local_needs, plan_layout,
                                        stack, to_global)
from duet_jax.training.checkpoint import Checkpoints
from duet_jax.training.export import export_trained
from duet_jax.training.hosts import StopRequest, barrier, is_main, summed
from duet_jax.training.config import ConfigError, TrainConfig
from duet_jax.training.metrics import MetricsLog, plot_loss
from duet_jax.training.resume import check_resume_config
from duet_jax.training.optim import learning_rate_schedule, make_optimizer, trained_groups
from duet_jax.training.step import StepFunctions, init_state, state_shardings


@dataclasses.dataclass
class Run:
    """A set-up run, before its first step (tests drive it step by step)."""
    cfg: TrainConfig
    model: LlavaModel
    reduction: Optional[object]           # duet_jax.reduction.ReductionConfig
    mesh: jax.sharding.Mesh
    loader: TrainBatchIterator
    steps: StepFunctions
    schedule: Callable                    # 0-based optimizer step -> learning rate
    total_steps: int
    state: dict
    start_step: int
    checkpoints: Checkpoints
    assets: str

    def next_batch(self):
        """(global [A, B, ...] arrays, StepLayout) of the next optimizer step."""
        micro = [next(self.loader) for _ in range(self.cfg.accumulation_steps)]
        needs = agree(local_needs(micro, self.model.config, self.reduction))
        layout = plan_layout(needs, self.model.config, self.reduction, self.cfg.segment_bucket)
        return to_global(stack(micro, layout.length, self.loader.pad_id), self.mesh), layout

    def step(self) -> dict:
        """Run one optimizer step; returns its metrics as Python numbers."""
        batch, layout = self.next_batch()
        self.state, metrics = self.steps(self.state, batch, layout)
        return {k: v.item() for k, v in jax.device_get(metrics).items()}


def _setup_runtime(cfg: TrainConfig) -> None:
    d = cfg.distributed
    if d.initialize:
        jax.distributed.initialize(coordinator_address=d.coordinator_address,
                                   num_processes=d.num_processes, process_id=d.process_id)
    if cfg.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", cfg.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _make_mesh(cfg: TrainConfig, devices: Optional[list]):
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if devices is None and -1 not in sizes and jax.process_count() == 1:
        # Explicit sizes covering fewer devices than there are: use the first ones.
        devices = jax.devices()[:max(1, sizes[0] * sizes[1] * sizes[2])]
    try:
        mesh = make_mesh(*sizes, devices=devices)
    except ValueError as e:     # sizes that do not match the devices
        raise ConfigError(f"mesh: {e}") from None
    check_batch_divides(cfg.micro_batch_size, mesh)
    return mesh


def _make_loader(cfg: TrainConfig, records, tokenizer, assets: str, model_cfg
                 ) -> TrainBatchIterator:
    """This process's share of every micro-batch (`micro_batch_size / process_count` samples)."""
    processor = load_image_processor(assets, image_size=model_cfg.vision.image_size)
    encoder = SampleEncoder(tokenizer, processor, image_folder=cfg.data.image_folder,
                            template=cfg.data.template,
                            image_token_index=model_cfg.image_token_index,
                            image_seq_length=model_cfg.image_seq_length,
                            max_length=cfg.data.max_length)
    loader_cfg = LoaderConfig(batch_size=cfg.micro_batch_size // jax.process_count(),
                              length_buckets=cfg.data.length_buckets, seed=cfg.seed,
                              shuffle=cfg.data.shuffle, num_epochs=None,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(),
                              num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch)
    try:
        return TrainBatchIterator(records, encoder, loader_cfg)
    except ValueError as e:     # data set smaller than one batch, bad buckets
        raise ConfigError(f"data: {e}") from None


def _total_steps(cfg: TrainConfig, loader: TrainBatchIterator, num_records: int) -> int:
    total = cfg.num_epochs * loader.steps_per_epoch // cfg.accumulation_steps
    if total < 1:
        raise ConfigError(f"{num_records} records give {loader.steps_per_epoch} micro-batches "
                          f"per epoch, fewer than one global batch of {cfg.global_batch_size}; "
                          "lower global_batch_size")
    return min(total, cfg.max_steps) if cfg.max_steps > 0 else total


def _warn(line: str) -> None:
    if is_main():
        print(line, file=sys.stderr, flush=True)


def check_inputs(cfg: TrainConfig) -> None:
    """Paths the run reads and the folder it writes, checked before anything is written."""
    if not cfg.output_dir:
        raise ConfigError("output_dir is empty; give the folder the run writes into")
    try:
        get_template(cfg.data.template)
    except ValueError as e:
        raise ConfigError(f"data.template: {e}") from None
    out = os.path.abspath(cfg.output_dir)
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"output_dir {out} is not a folder ({existing} is a file); choose "
                          "another output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write output_dir {out} ({existing} is read-only); "
                              "choose a writable output_dir or fix its permissions")
    if not os.path.isfile(cfg.data.train_json):
        raise ConfigError(f"data.train_json: no such file ({cfg.data.train_json}); give the "
                          "path of a LLaVA-JSON file")
    for key in ("model.checkpoint", "model.tokenizer", "model.vision_tower"):
        path = getattr(cfg.model, key.split(".")[1])
        if path and not os.path.exists(path):
            raise ConfigError(f"{key}: no such file or folder ({path}); give an existing path "
                              "or leave it unset")
    build.compute_dtypes(cfg)               # ConfigError naming model.dtype / param_dtype
    build.reduction_for(cfg, build.geometry_config(cfg))   # budgets and layers fit the model
    if cfg.checkpoint.export_dtype is not None:
        try:
            cast_dtype(cfg.checkpoint.export_dtype)
        except ValueError as e:
            raise ConfigError(f"checkpoint.export_dtype: {e}") from None
    if cfg.data.image_folder and not os.path.isdir(cfg.data.image_folder):
        raise ConfigError(f"data.image_folder: no such folder ({cfg.data.image_folder}); give "
                          "the folder the records' image paths are relative to")


def setup(cfg: TrainConfig, devices: Optional[list] = None) -> Run:
    """Load data and model, build the optimizer and mesh, restore the newest checkpoint.

    devices: the mesh's devices (default: all of them, or the first ones that
    explicit mesh sizes ask for).
    """
    check_inputs(cfg)
    records = load_records(cfg.data.train_json, template=cfg.data.template,
                           image_folder=cfg.data.image_folder, check_images=cfg.data.check_images)
    assets = build.prepare_assets(cfg, records)
    tokenizer = build.load_tokenizer(assets)
    model_cfg = build.model_config(cfg, tokenizer)
    reduction = build.reduction_for(cfg, model_cfg)
    dtype, param_dtype = build.compute_dtypes(cfg)
    model = LlavaModel(model_cfg, dtype, param_dtype, cfg.model.remat)
    mesh = _make_mesh(cfg, devices)
    loader = _make_loader(cfg, records, tokenizer, assets, model_cfg)
    total = _total_steps(cfg, loader, len(records))

    abstract_params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    optimizer = make_optimizer(cfg.optim, total, abstract_params)
    abstract_state = jax.eval_shape(lambda p: init_state(p, optimizer, cfg.seed), abstract_params)
    shardings = state_shardings(abstract_state, optimizer, mesh)
    checkpoints = Checkpoints(os.path.join(cfg.output_dir, "checkpoints"), cfg.checkpoint)
    newest = checkpoints.latest_step()
    if newest:
        check_resume_config(cfg, newest)
    start, state, data_state = checkpoints.restore_newest(abstract_state, shardings, _warn)
    if start:
        try:
            # the saved counts are of all processes: process 0 carries them on
            loader.set_state(data_state if is_main() else dict(data_state, stats={}))
        except ValueError as e:     # data set, batch size or seed changed since the checkpoint
            raise ConfigError(f"cannot resume the data iterator: {e}") from None
    else:
        params = build.initial_params(cfg, model, shardings["params"])
        state = jax.jit(lambda p: init_state(p, optimizer, cfg.seed),
                        out_shardings=shardings, donate_argnums=0)(params)
    steps = StepFunctions(model, reduction, optimizer, trained_groups(cfg.optim.recipe), mesh,
                          shardings)
    return Run(cfg, model, reduction, mesh, loader, steps, learning_rate_schedule(cfg.optim, total),
               total, state, start, checkpoints, assets)


def _write_config(cfg: TrainConfig) -> None:
    path = os.path.join(cfg.output_dir, "config.yaml")
    with open(path + ".tmp", "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(path + ".tmp", path)


def _run_steps(run: Run, log: MetricsLog, bar, stop: StopRequest) -> Optional[dict]:
    """Steps start_step+1 .. total_steps: step, log, checkpoint; after a stop request, the
    step under way is finished and saved. Returns the last record."""
    cfg, last = run.cfg, None
    warned = summed(run.loader.stats)["truncated"] > 0
    for step in range(run.start_step + 1, run.total_steps + 1):
        t0 = time.perf_counter()
        m = run.step()
        seconds = time.perf_counter() - t0
        stats = summed(run.loader.stats)     # the data of all processes
        last = {"step": step, "loss": m["loss"], "lr": float(run.schedule(step - 1)),
                "tokens_per_s": m["tokens"] / seconds, "tokens": m["tokens"],
                "targets": m["targets"], "grad_norm": m["grad_norm"], "step_time_s": seconds,
                "samples_truncated": int(stats["truncated"])}
        log.write(last)
        if not warned and stats["truncated"]:
            warned = True
            bar.write(f"step {step}: samples longer than max_length={cfg.data.max_length} are "
                      "truncated (running count: samples_truncated in metrics.jsonl)")
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}",
                        lr=f"{last['lr']:.2e}")
        bar.update()
        stopping = stop.reached(step)
        if stopping or run.checkpoints.should_save(step, run.total_steps):
            run.checkpoints.save(step, run.state, dict(run.loader.get_state(), stats=stats))
        if stopping:
            break
    return last


def train(cfg: TrainConfig, progress: Optional[bool] = None) -> dict:
    """Run (or resume) the training described by `cfg`; returns a summary dict
    (`stopped`: the signal that ended the run early, after saving its last step)."""
    from duet_jax.progress import progress_bar

    _setup_runtime(cfg)
    main = is_main()
    run = setup(cfg)
    if main:
        _write_config(cfg)
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    log = MetricsLog(metrics_path, run.start_step, enabled=main)
    bar = progress_bar(total=run.total_steps, initial=run.start_step, desc="train", unit="step",
                       enabled=main if progress is None else progress)
    if run.start_step and main:
        print(f"resumed from {run.checkpoints.directory}/{run.start_step}", flush=True)
    try:
        with StopRequest() as stop:
            last = _run_steps(run, log, bar, stop)
    finally:
        bar.close()     # an error message then starts on its own line
    run.checkpoints.wait()
    if main and os.path.isfile(metrics_path):
        plot_loss(metrics_path, os.path.join(cfg.output_dir, "loss.png"))
    exported = None
    hf_dir = os.path.join(cfg.output_dir, "hf")
    if (not stop.signal_name and cfg.checkpoint.export_hf
            and (last is not None or not os.path.isdir(hf_dir))):
        exported = export_trained(run.state["params"], run.model.config, run.assets,
                                  cfg.output_dir, cfg.checkpoint.export_dtype)[1]
    run.checkpoints.close()
    barrier("run finished")
    stats = summed(run.loader.stats)
    if main and stats.get("truncated"):
        print(f"{stats['truncated']} of {stats['samples']} samples were longer than "
              f"max_length={cfg.data.max_length} and were truncated")
    return {"steps": last["step"] if last else run.start_step, "total_steps": run.total_steps,
            "start_step": run.start_step, "final_loss": last["loss"] if last else None,
            "data": stats, "hf_export": exported, "output_dir": cfg.output_dir,
            "stopped": stop.signal_name}
