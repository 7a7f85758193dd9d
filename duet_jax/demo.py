"""`make demo`: the miniature DUET-VLM reproduction (duet_jax/miniature), after a
numerical check of the real-size code path.

1. A tiny random LLaVA-1.5-shaped model (576 patches, `duet_jax.tiny`) in HF layout,
   run by transformers and, converted to our format, in Flax: the logits' agreement
   with HF PyTorch, the timings, and the DUET presets' token counts. Random weights:
   this part shows agreement and speed, not accuracy.
2. The miniature reproduction: a LLaVA-shaped model with 576 visual tokens on a
   synthetic shapes/letters task, fine-tuned here (full tokens and with DUET)
   from the stage-0/1 checkpoint shipped in duet_jax/miniature/pretrained, then
   evaluated unreduced, with DUET / VisionZip / PyramidDrop at 192/128/64 tokens,
   the zoo (DivPrune, DART, VisPruner, VScan, random, pool) at 64 tokens
   and with a blind control: the paper's Table 1/3 in miniature, a plot and
   kept-token pictures. `--no-miniature` skips it; `--from-scratch` retrains the
   shipped stages too (about 50 min on 2 cores).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from duet_jax.cli import Parser, guarded
from duet_jax.resources import child_env, package_path

ASSET = package_path("data", "assets", "demo.png")


def build_hf_checkpoint(out_dir: str, seed: int = 0) -> None:
    """A LLaVA-1.5-shaped (336 px / 14, 576 patches, 32 LM layers) tiny random HF checkpoint
    with its tokenizer and image processor (`duet_jax.tiny`, a little wider)."""
    from duet_jax.tiny import build
    build(out_dir, seed=seed, text_width=128, vision_layers=4, vision_width=64)


def steady_seconds(fn, runs: int = 5) -> float:
    """Median wall time of `fn()` over `runs` calls (after the caller's compile call)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[runs // 2]


def agreement_and_presets(workdir: str, presets) -> None:
    """Random HF LLaVA -> `python -m convert` -> Flax: |logit difference| vs PyTorch,
    timings, and every preset's token counts and jitted time."""
    import torch
    from transformers import LlavaForConditionalGeneration
    import duet_jax
    from duet_jax.data.images import load_image_processor, preprocess_image
    from duet_jax.reduction import average_visual_tokens, get_preset

    hf_dir, jax_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "jax")
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    build_hf_checkpoint(hf_dir)
    convert = [sys.executable, "-m", "duet_jax.checkpoints.cli"]    # duet-convert, python -m convert
    subprocess.run([*convert, "--src", hf_dir, "--dst", jax_dir], check=True,
                   stdout=subprocess.DEVNULL, env=child_env())
    print(f"built + converted a tiny random LLaVA in {time.perf_counter() - t0:.1f}s -> {jax_dir}")
    model = duet_jax.load_llava(jax_dir)
    cfg = model.config
    pixels = preprocess_image(ASSET, load_image_processor(hf_dir))[None]
    ids = np.random.default_rng(0).integers(3, cfg.image_token_index,   # text ids below <image>
                                            (1, 24 + cfg.image_seq_length)).astype(np.int64)
    ids[0, 4:4 + cfg.image_seq_length] = cfg.image_token_index

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()     # its weight-loading bar floods a log
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    for _ in range(2):   # the second call is the steady-state time
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
        t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = np.asarray(model.logits(ids, pixels))
    t_first = time.perf_counter() - t0
    t_jax = steady_seconds(lambda: np.asarray(model.logits(ids, pixels)))
    print(f"unreduced logits {list(ref.shape)}: max |JAX - PyTorch| = {np.abs(ours - ref).max():.2e}")
    print(f"forward: PyTorch eager {t_torch * 1e3:.0f} ms; JAX first call (compile) "
          f"{t_first * 1e3:.0f} ms, jitted {t_jax * 1e3:.0f} ms (median of 5)")
    for name in presets:
        red = get_preset(name)
        out = np.asarray(model.logits(ids, pixels, reduction=red))      # compiles
        dt = steady_seconds(lambda: np.asarray(model.logits(ids, pixels, reduction=red)))
        avg = average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers)
        n0 = red.image_tokens(cfg.vision.num_patches)
        print(f"{name}: {n0} image tokens after stage 1, logits {list(out.shape)}, "
              f"jitted {dt * 1e3:.0f} ms, average visual tokens per LM layer {avg:.2f}")


README_SECONDS = 657    # README, "Two commands": a fresh clone's `make demo`, installs included


def wall_time_line(seconds: float) -> str:
    """This run's wall time beside the README's figure, with what this machine had to give."""
    cores = os.cpu_count() or 1
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"demo wall time: {seconds:.0f} s (installs not included) on {cores} CPU "
            f"core{'s' * (cores > 1)}{load}; README: {README_SECONDS} s from a fresh clone with "
            "the installs, on an idle 2-core CPU")


def main(argv=None) -> int:
    ap = Parser(prog="duet-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=os.path.join(".cache", "demo"))
    ap.add_argument("--presets", nargs="*", default=["llava15-duet-192", "llava15-duet-128",
                                                     "llava15-duet-64"])
    ap.add_argument("--no-miniature", dest="miniature", action="store_false",
                    help="only the agreement check, not the miniature reproduction")
    ap.add_argument("--from-scratch", action="store_true",
                    help="retrain the miniature's stages 0-1 instead of the shipped checkpoint")
    args = ap.parse_args(argv)
    return guarded(_demo, args)


def _demo(args) -> int:
    from duet_jax.errors import InputError
    from duet_jax.reduction import resolve_reduction

    for name in args.presets:      # before any work: a typo must not cost the agreement run
        try:
            resolve_reduction(name)
        except ValueError as e:
            raise InputError(f"--presets {name}: {' '.join(str(e).split())}") from None
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise InputError(f"--workdir {args.workdir} is a file; pass a folder")
    t0 = time.perf_counter()
    if importlib.util.find_spec("torch") is None:
        print("skipped the agreement check with PyTorch: torch is not installed "
              "(pip install 'duet_jax[test]', which pins torch==2.13.0)")
    else:
        agreement_and_presets(os.path.join(args.workdir, "agreement"), args.presets)
    if args.miniature:
        from duet_jax.miniature.pipeline import PipelineConfig, run
        result = run(PipelineConfig(out=args.workdir, from_scratch=args.from_scratch),
                     log=lambda line: print(line, flush=True))
        print(f"\n{result['inference_table']}\n\n{result['reading_table']}\n\n"
              f"{result['trained_table']}\n\n{result['spread_table']}")
        print(f"\nplot: {result['plot']}\nkept-token pictures: {result['kept_dir']}/\n"
              f"report: {result['report']}")
    print(wall_time_line(time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
