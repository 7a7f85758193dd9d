"""Train-step time (forward + backward + AdamW update) with DUET on vs full tokens.

    python bench/train_step.py [--batch 1] [--text-tokens 96] [--rounds 3] [--dtype float32]

LLaVA-1.5-7B's shape (576 patches, 24 CLIP layers, 32 LLM layers) with reduced
widths, the fine-tune recipe (CLIP frozen, projector + LLM trained, per-layer
remat), one device. Every configuration is compiled first; then the timed
steps run round-robin (one step of each configuration per round), so the
ratios come from one run under the same machine load. Memory is XLA's
compiled peak estimate (temporaries + arguments + outputs - donated) and, on
GPUs, the allocator's peak. Beside the measurement, the analytic training
FLOPs at the real 7B widths (CLIP forward only; projector/LLM forward, remat
forward, backward = 2x forward) give the expected ratio where matmuls dominate.
Prints a table and writes bench/results/train_step.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import llava_shaped_hf_config, print_table, write_json
from bench.flops import prefill_flops
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import average_visual_tokens, get_preset
from duet_jax.sharding import make_mesh
from duet_jax.training.batching import local_needs, plan_layout, stack, to_global
from duet_jax.training.config import OptimConfig
from duet_jax.training.optim import make_optimizer, trained_groups
from duet_jax.training.step import StepFunctions, init_state, state_shardings

PRESETS = [None, "llava15-duet-192", "llava15-duet-128", "llava15-duet-64"]
PAPER = {"llava15-duet-192": -26, "llava15-duet-128": -31, "llava15-duet-64": -36}


def synthetic_batch(cfg: LlavaConfig, batch: int, text_tokens: int, seed: int = 0) -> dict:
    """vicuna_v1-like samples: system + question (labels -100), image block, answer (learned)."""
    g = np.random.default_rng(seed)
    n = cfg.image_seq_length
    prefix, question = 36, text_tokens // 3
    answer = text_tokens - prefix - question
    length = prefix + n + question + answer
    ids = g.integers(3, cfg.text.vocab_size - 2, (batch, length)).astype(np.int32)
    ids[:, prefix:prefix + n] = cfg.image_token_index
    labels = np.full_like(ids, -100)
    labels[:, -answer:] = ids[:, -answer:]
    size = cfg.vision.image_size
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
            "pixel_values": g.standard_normal((batch, 3, size, size)).astype(np.float32),
            "has_image": np.ones((batch,), bool)}


def analytic_train_flops(cfg: LlavaConfig, text_tokens: int, reduction) -> float:
    """Per-sample training FLOPs: frozen CLIP forward + 4x (projector + LLM + scoring) + 3x head."""
    f = prefill_flops(cfg, text_tokens, reduction)
    counts = [f["visual_tokens_in"]]
    if reduction is not None and reduction.stage2 is not None:
        counts = reduction.stage2.image_counts(counts[0])
    final_len = text_tokens + counts[-1]
    head = 2 * final_len * cfg.text.hidden_size * cfg.text.vocab_size
    return f["clip"] + 4 * (f["projector"] + f["lm"]) + f["scoring"] + 3 * head


def memory_of(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
            - m.alias_size_in_bytes)
    return {"xla_peak_bytes": int(peak), "temp_bytes": int(m.temp_size_in_bytes)}


def build(cfg, name, batch, dtype, mesh):
    reduction = get_preset(name) if name else None
    model = LlavaModel(cfg, dtype=dtype, param_dtype=jnp.float32, remat=True)
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    opt = make_optimizer(OptimConfig(lr=2e-5, warmup_ratio=0.03), 1000, params)
    state = init_state(params, opt, 0)
    shardings = state_shardings(jax.eval_shape(lambda s: s, state), opt, mesh)
    steps = StepFunctions(model, reduction, opt, trained_groups("finetune"), mesh, shardings)
    layout = plan_layout(local_needs([batch], cfg, reduction), cfg, reduction, 16)
    arrays = to_global(stack([batch], layout.length, 0), mesh)
    fn = steps.get(layout)
    t0 = time.perf_counter()
    compiled = fn.lower(jax.device_put(state, shardings), arrays).compile()
    compile_s = time.perf_counter() - t0
    return {"name": name or "full", "reduction": reduction, "compiled": compiled,
            "state": jax.device_put(state, shardings), "batch": arrays, "layout": layout,
            "compile_s": compile_s, "times": [], "memory": memory_of(compiled)}


def run_once(entry) -> float:
    t0 = time.perf_counter()
    entry["state"], metrics = entry["compiled"](entry["state"], entry["batch"])
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width-v", type=int, default=64)
    ap.add_argument("--width-t", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPUs)")
    args = ap.parse_args()
    cfg = LlavaConfig.from_hf(llava_shaped_hf_config(args.width_v, args.width_t,
                                                     args.vocab).to_dict())
    cfg7b = LlavaConfig.from_hf(llava_shaped_hf_config(1024, 4096, 32064).to_dict())
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = synthetic_batch(cfg, args.batch, args.text_tokens)
    entries = []
    for name in PRESETS:
        entries.append(build(cfg, name, batch, jnp.dtype(args.dtype), mesh))
        print(f"compiled {entries[-1]['name']} in {entries[-1]['compile_s']:.1f}s", flush=True)
    for e in entries:
        run_once(e)                                   # warm-up
    for _ in range(args.rounds):
        for e in entries:
            e["times"].append(run_once(e))
    if jax.default_backend() == "gpu":
        stats = jax.devices()[0].memory_stats() or {}
        gpu_peak = stats.get("peak_bytes_in_use")
    else:
        gpu_peak = None

    full_t = statistics.median(entries[0]["times"])
    full_f = analytic_train_flops(cfg7b, args.text_tokens, None)
    rows, results = [], []
    for e in entries:
        t = statistics.median(e["times"])
        red = e["reduction"]
        avg = average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers)
        flops_ratio = analytic_train_flops(cfg7b, args.text_tokens, red) / full_f
        mem = e["memory"].get("xla_peak_bytes", 0) / 2 ** 20
        rows.append([e["name"], f"{avg:.2f}", f"{t * 1e3:.0f}", f"{(t / full_t - 1) * 100:+.1f}%",
                     f"{PAPER[e['name']]:+d}%" if e["name"] in PAPER else "-",
                     f"{(flops_ratio - 1) * 100:+.1f}%", f"{mem:.0f}", f"{e['compile_s']:.0f}"])
        results.append({"reduction": e["name"], "avg_visual_tokens": avg, "step_s_median": t,
                        "step_s_all": e["times"], "change_vs_full": t / full_t - 1,
                        "paper_change": PAPER.get(e["name"], 0) / 100,
                        "analytic_7b_flops_change": flops_ratio - 1, "memory": e["memory"],
                        "compile_s": e["compile_s"], "layout": {
                            "length": e["layout"].length,
                            "segment_lengths": e["layout"].segment_lengths}})
    print_table(["reduction", "avg vis", "step ms", "vs full", "paper", "7B FLOPs", "peak MiB",
                 "compile s"], rows)
    path = write_json("train_step.json", {
        "what": "train step (fwd + bwd + AdamW), finetune recipe, remat, one device",
        "shape": {"patches": cfg.vision.num_patches, "clip_layers": cfg.vision.num_hidden_layers,
                  "llm_layers": cfg.text.num_hidden_layers, "width_v": args.width_v,
                  "width_t": args.width_t, "vocab": args.vocab},
        "batch": args.batch, "text_tokens": args.text_tokens, "rounds": args.rounds,
        "dtype": args.dtype, "device": str(jax.devices()[0]), "gpu_peak_bytes": gpu_peak,
        "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
