"""Train the miniature in stages with `duet-train` (`python -m duet_jax.training.cli`, what
`python train.py` runs; one subprocess per stage).

* ``pretrain``: projector + LM from scratch on the stage-0 tower (frozen, as
  CLIP in LLaVA), unreduced: the miniature's stand-in for LLaVA pretraining.
* ``finetune-full`` and ``finetune-duet``: from the pretrained weights, tower
  frozen (`recipe: finetune`, LLaVA-1.5's stage 2), the same steps and data
  order, one at full tokens (the baseline of every table) and one with DUET
  active in training (the paper's Table 3 / 6 arm).

A finished stage leaves `<run>/final` (a converted duet_jax checkpoint) and
`<run>/miniature_done.json` holding the exact command; a later call with the
same command skips it, a different one retrains it, an interrupted one resumes
from its orbax checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence

from duet_jax.resources import child_env

DONE = "miniature_done.json"
IDENTITY = "miniature_identity.json"


def read_metrics(run_dir: str, name: str = "metrics.jsonl") -> List[dict]:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def step_seconds(run_dir: str) -> Optional[float]:
    """Mean optimizer-step wall time without step 1 (it includes compilation)."""
    times = [r["step_time_s"] for r in read_metrics(run_dir) if r["step"] > 1]
    return sum(times) / len(times) if times else None


def _load(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cached(run_dir: str, identity: dict, work: Callable[[], None]) -> dict:
    """Run `work()` unless `run_dir` holds a finished run of the same `identity`.

    A run of another identity is deleted first; an unfinished run of the same
    identity is left in place (train.py resumes from its checkpoints).
    Returns {final, seconds, step_s, skipped}.
    """
    final = os.path.join(run_dir, "final")
    done = _load(os.path.join(run_dir, DONE))
    if done and done.get("identity") == identity and os.path.isdir(final):
        return {"final": final, "seconds": done["seconds"], "step_s": step_seconds(run_dir),
                "skipped": True, "digest": digest(identity)}
    if os.path.isdir(run_dir) and _load(os.path.join(run_dir, IDENTITY)) != identity:
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, IDENTITY), "w", encoding="utf-8") as f:
        json.dump(identity, f)
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    with open(os.path.join(run_dir, DONE), "w", encoding="utf-8") as f:
        json.dump({"identity": identity, "seconds": seconds}, f)
    return {"final": final, "seconds": seconds, "step_s": step_seconds(run_dir),
            "skipped": False, "digest": digest(identity)}


def digest(identity) -> str:
    """Short stable hash of a JSON-able identity (or of a file's bytes for a path)."""
    h = hashlib.sha256()
    if isinstance(identity, str) and os.path.isfile(identity):
        with open(identity, "rb") as f:
            h.update(f.read())
    else:
        h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def train_command(config: str, run_dir: str, overrides: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "duet_jax.training.cli", "--config", config,
            "--set", f"output_dir={run_dir}", *[a for o in overrides for a in ("--set", o)]]


def run_stage(config: str, run_dir: str, overrides: Sequence[str], *, log=print,
              quiet: bool = False, in_process: bool = False, upstream: str = "") -> dict:
    """Run (or skip / resume) one `duet-train` stage.

    in_process: call the function train.py calls (duet_jax.training.loop.train)
    in this process instead of a subprocess (the toy-scale test: no second
    JAX start-up). upstream: a digest of the starting weights (part of the identity,
    so a retrained base retrains this stage too).
    """
    command = train_command(config, run_dir, overrides)
    with open(config, encoding="utf-8") as f:
        identity = {"config": f.read(), "overrides": list(overrides), "upstream": upstream}

    def work():
        log(f"  $ duet-train --config {_shown(config)} "
            + " ".join(f"--set {o}" for o in [f"output_dir={run_dir}", *overrides]))
        if in_process:
            from duet_jax.training.config import load_config
            from duet_jax.training.loop import train
            train(load_config(config, [f"output_dir={run_dir}", *overrides]), progress=not quiet)
            return
        result = subprocess.run(command, env=child_env(), text=True,
                                stdout=subprocess.PIPE if quiet else None,
                                stderr=subprocess.STDOUT if quiet else None)
        if result.returncode != 0:
            tail = (result.stdout or "")[-2000:] if quiet else ""
            raise RuntimeError(f"duet-train failed (exit {result.returncode}) for {config}\n{tail}")

    return cached(run_dir, identity, work)
