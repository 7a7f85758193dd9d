"""Shared pieces of the benchmarks: the LLaVA-shaped config, timing, JSON output."""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.generation.decode import last_token_logits

@functools.partial(jax.jit, static_argnames=("module", "reduction"))
def jax_prefill(module, params, ids, media, mask, reduction):
    """One family's (reduced) prefill, as the decoder's first step computes it: logits
    [B, 1, V] of each sample's last valid token. `media`: that family's pixels or images."""
    seq = module.forward(params, ids, media, mask, reduction=reduction).sequence
    return last_token_logits(module.text, params["text"], seq.hidden, seq.valid)[:, None]


def family_arguments(description: str, presets, *, tower: str, vision_layers: int,
                     text_layers: int, width_t_multiple: int = 64):
    """The argument parser the family prefill benches share: batch, text tokens, repeats,
    presets, the reduced widths and depths of their LLaVA-shaped model."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="*", default=presets)
    ap.add_argument("--width-v", type=int, default=256, help=f"{tower} width (multiple of 64)")
    ap.add_argument("--width-t", type=int, default=512,
                    help=f"LLM width (multiple of {width_t_multiple})")
    ap.add_argument("--vision-layers", type=int, default=vision_layers)
    ap.add_argument("--text-layers", type=int, default=text_layers)
    ap.add_argument("--vocab", type=int, default=32064)
    return ap


def anyres_prompts(module, num_image_tokens: int, image_size, crop: int, batch: int,
                   text_tokens: int, image_at: int, seed: int = 0):
    """An AnyRes family's bench batch: ids [B, n + text] (random text ids below the
    config's special ids, the `n` image ids at `image_at`), an all-ones mask, and
    `NextImages` of random pixels [B, crops, 3, crop, crop] at original size `image_size`.
    Returns (ids, mask, pixels, images) after the module's own input check."""
    from duet_jax.models import anyres
    from duet_jax.models.llava_next import NextImages

    cfg = module.config
    g = np.random.default_rng(seed)
    ids = g.integers(3, cfg.text.vocab_size - 3, (batch, num_image_tokens + text_tokens))
    ids = ids.astype(np.int32)
    ids[:, image_at:image_at + num_image_tokens] = cfg.image_token_index
    crops = anyres.num_crops(cfg, image_size)
    pixels = g.standard_normal((batch, crops, 3, crop, crop), np.float32)
    images = NextImages(jnp.asarray(pixels), [image_size] * batch)
    module.check_inputs(ids, images)
    return jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), pixels, images


def time_anyres_presets(module, params, args, num_image_tokens: int, image_size, crop: int,
                        image_at: int, peer=None):
    """An AnyRes family's prefill timing: `anyres_prompts` of one image of `image_size`,
    args.presets validated against its crops, every setting (and `peer`, a (name, factory)
    pair whose factory(ids, pixels) gives a thunk) timed round-robin over args.repeats.
    Returns (settings {name: reduction or None}, times {name: s}, avg_of, crops)."""
    from duet_jax.models import anyres
    from duet_jax.reduction import average_visual_tokens, get_preset

    cfg = module.config
    crops = anyres.num_crops(cfg, image_size)
    ids, mask, pixels, images = anyres_prompts(module, num_image_tokens, image_size, crop,
                                               args.batch, args.text_tokens, image_at)
    settings = {"none": None, **{name: get_preset(name) for name in args.presets}}
    for red in settings.values():
        if red is not None:
            red.validate(cfg.vision.num_patches, cfg.text.num_hidden_layers, crops=crops)
    fns = {name: (lambda red=red: jax_prefill(module, params, ids, images, mask,
                                              red).block_until_ready())
           for name, red in settings.items()}
    if peer is not None:
        fns[peer[0]] = peer[1](ids, pixels)
    times = time_round_robin(fns, repeats=args.repeats)
    avg_of = lambda red: num_image_tokens if red is None else average_visual_tokens(
        red, cfg.vision.num_patches, cfg.text.num_hidden_layers, crops)
    return settings, times, avg_of, crops


def speedup_rows(names, settings: dict, times: dict, flops_of, avg_of):
    """Per setting `name` (in `names`; `settings[name]` its reduction, None unreduced):
    median seconds, speedup over "none", FLOP bound (flops_of(None) / flops_of(red)) and
    the fraction of it reached. Returns (results {name: entry}, table rows)."""
    base = flops_of(None)
    results, rows = {}, []
    for name in names:
        red = settings.get(name)
        bound, avg = base / flops_of(red), avg_of(red)
        speedup = times["none"] / times[name]
        results[name] = {"avg_tokens": avg, "flop_bound": bound, "seconds": times[name],
                         "speedup": speedup, "fraction_of_bound": speedup / bound}
        rows.append([name, f"{avg:.2f}", f"{bound:.2f}", f"{times[name] * 1e3:.0f}",
                     f"{speedup:.2f}", f"{speedup / bound:.2f}"])
    return results, rows


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def llava_shaped_hf_config(width_v=256, width_t=512, vocab=32064, head_dim_t=64):
    """LLaVA-1.5-7B's shape (576 patches, 24 CLIP layers, 32 LLM layers, MHA) with
    reduced widths so it runs on a laptop CPU; an HF `LlavaConfig`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    vc = CLIPVisionConfig(hidden_size=width_v, intermediate_size=4 * width_v, num_hidden_layers=24,
                          num_attention_heads=width_v // 64, image_size=336, patch_size=14,
                          projection_dim=width_v)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=width_t, intermediate_size=int(2.6875 * width_t),
                     num_hidden_layers=32, num_attention_heads=width_t // head_dim_t,
                     num_key_value_heads=width_t // head_dim_t, max_position_embeddings=4096)
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_index=32000,
                       image_seq_length=576)


def llava_7b_hf_config():
    """LLaVA-1.5-7B's real widths: CLIP-L/14-336 (1024 wide, 16 heads) + Vicuna-7B (4096
    wide, 32 heads of 128, MLP 11008, vocab 32064)."""
    return llava_shaped_hf_config(width_v=1024, width_t=4096, vocab=32064, head_dim_t=128)


def prompt_batch(cfg, batch: int, text_tokens: int, image_at: int, seed: int = 0):
    """NumPy input_ids [B, N + text_tokens] int32 (one image block of N ids at `image_at`),
    all-ones mask and pixels [B, 3, H, W] float32: the benchmarks' prompts."""
    g = np.random.default_rng(seed)
    n = cfg.image_seq_length
    ids = g.integers(3, min(30000, cfg.text.vocab_size), (batch, n + text_tokens)).astype(np.int32)
    ids[:, image_at:image_at + n] = cfg.image_token_index
    size = cfg.vision.image_size
    pixels = g.standard_normal((batch, 3, size, size)).astype(np.float32)
    return ids, np.ones_like(ids), pixels


def hf_and_jax_llava(hf_cfg, *, torch_dtype=None, device="cpu", jax_dtype=None, unstack=True):
    """One random HF `LlavaForConditionalGeneration` (sdpa attention, eval mode, on
    `device`) and the same weights in JAX through the checkpoint converter:
    (hf, LlavaConfig, params). `unstack`: the CPU inference layout (per-layer trees);
    stacked layers (scan) compile much faster at 7B depth on GPUs."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from duet_jax.checkpoints.load import load_params
    from duet_jax.models.llava import unstack_params
    torch.manual_seed(0)
    with torch.device(device):
        hf = LlavaForConditionalGeneration._from_config(
            hf_cfg, attn_implementation="sdpa", dtype=torch_dtype or torch.float32)
    hf = hf.eval()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None   # 7B weights: RAM, not disk
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        hf.save_pretrained(tmp)
        cfg, params = load_params(tmp, dtype=jax_dtype)
    return hf, cfg, unstack_params(params) if unstack else params


def matmul_peak_gflops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """This machine's measured matmul peak: GFLOP/s of one [n, n] x [n, n] `jnp.dot`
    (median of `repeats`), the roof every bench table's GFLOP/s column is read against."""
    a = jnp.ones((n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def roofline(flops: float, seconds: float, peak_gflops: float) -> dict:
    """Achieved GFLOP/s of `flops` done in `seconds` and its fraction of the measured peak."""
    achieved = flops / seconds / 1e9
    return {"gflops": achieved, "of_peak": achieved / peak_gflops}


def roofline_cells(flops: float, seconds: float, peak_gflops: float) -> list:
    """The two table cells of `roofline`: achieved GFLOP/s and '% of peak'."""
    r = roofline(flops, seconds, peak_gflops)
    return [f"{r['gflops']:.0f}", f"{100 * r['of_peak']:.0f}%"]


def load_note() -> str:
    """The 1-minute load average against the CPU count: how shared the machine was."""
    try:
        return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
    except OSError:
        return "load unknown"

# Idle seconds before each timed call. A framework's worker threads spin for a while
# after its last op (OpenMP's wait policy in torch, Eigen's pool in XLA), and a call
# started in that window shares the cores with them: a CLIP attention layer timed
# right after a torch call ran 48 ms against 33 ms for the same program timed later
# (batch 8, 577 rows).
SETTLE_SECONDS = 0.25


def time_round_robin(fns: dict, *, repeats=5, record: dict = None) -> dict:
    """Median wall seconds per named thunk, timed in interleaved rounds so that drifting
    machine load hits every setting alike (ratios stay meaningful on a shared CPU), each
    call after `SETTLE_SECONDS` of idle. `record`, if given, receives every round's
    seconds per name."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns} if record is None else record
    times.update({name: [] for name in fns})
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def write_json(name: str, payload: dict, directory: str = RESULTS) -> str:
    """Writes `payload` (plus the machine it ran on) to `directory`/`name` atomically."""
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = dict(payload, machine={"platform": platform.platform(), "cpus": os.cpu_count(),
                                     "jax": jax.__version__, "backend": jax.default_backend(),
                                     "load_at_end": load_note()})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
