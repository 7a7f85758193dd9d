"""Train-step time (forward + backward + AdamW update) with DUET on vs full tokens.

    python bench/train_step.py [--batch 1] [--text-tokens 96] [--rounds 3] [--dtype float32]
                               [--width-v 256 --width-t 512 --vocab 32064] [--no-torch] [--quick]

LLaVA-1.5-7B's shape (576 patches, 24 CLIP layers, 32 LLM layers) with reduced
widths, the fine-tune recipe (CLIP frozen, projector + LLM trained, per-layer
remat), one device. Every configuration is compiled first; then the timed
steps run round-robin (one step of each configuration per round), so the
ratios come from one run under the same machine load. Memory is XLA's
compiled peak estimate (temporaries + arguments + outputs - donated) and, on
GPUs, the allocator's peak. Beside the measurement, the analytic training
FLOPs at the real 7B widths (CLIP forward only; projector/LLM forward, remat
forward, backward = 2x forward) give the expected ratio where matmuls dominate;
the same count at the run's widths over the step time gives GFLOP/s against the
measured matmul peak. The peer (`bench/torch_train.py`: HF modules, autograd,
gradient checkpointing, AdamW) trains the same weights (one HF model converted into
JAX) on the same batch, timed in the same rounds; its step-1 loss is checked against
ours. `--quick`: widths 64/128, vocab 4096, full + DUET-64, 1 round.
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
import torch

from bench.common import (hf_and_jax_llava, llava_shaped_hf_config, load_note,
                          matmul_peak_gflops, print_table, roofline, roofline_cells,
                          time_round_robin, write_json)
from bench.flops import prefill_flops
from bench.torch_train import PeerTrainer, peer_loss
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import average_visual_tokens, get_preset
from duet_jax.sharding import make_mesh
from duet_jax.training.batching import local_needs, plan_layout, stack, to_global
from duet_jax.training.config import OptimConfig
from duet_jax.training.optim import make_optimizer, trained_groups
from duet_jax.training.step import StepFunctions, init_state, state_shardings

PRESETS = [None, "llava15-duet-192", "llava15-duet-128", "llava15-duet-64"]
PREFIX = 36          # system-prompt rows before the image block
PAPER = {"llava15-duet-192": -26, "llava15-duet-128": -31, "llava15-duet-64": -36}


def synthetic_batch(cfg: LlavaConfig, batch: int, text_tokens: int, seed: int = 0) -> dict:
    """vicuna_v1-like samples: system + question (labels -100), image block, answer (learned)."""
    g = np.random.default_rng(seed)
    n = cfg.image_seq_length
    prefix, question = PREFIX, text_tokens // 3
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


def build(cfg, name, batch, dtype, mesh, params):
    reduction = get_preset(name) if name else None
    model = LlavaModel(cfg, dtype=dtype, param_dtype=jnp.float32, remat=True)
    params = jax.tree.map(jnp.copy, params)      # each setting's state is donated step by step
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
    """One step; returns its loss (before the update)."""
    entry["state"], metrics = entry["compiled"](entry["state"], entry["batch"])
    return float(metrics["loss"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width-v", type=int, default=256)
    ap.add_argument("--width-t", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32064)
    ap.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPUs)")
    ap.add_argument("--no-torch", action="store_true", help="JAX only (no peer)")
    ap.add_argument("--quick", action="store_true", help="widths 64/128, full + DUET-64, 1 round")
    args = ap.parse_args()
    presets = PRESETS
    if args.quick:
        args.width_v, args.width_t, args.vocab, args.rounds = 64, 128, 4096, 1
        presets = [None, "llava15-duet-64"]
    torch.set_num_threads(os.cpu_count())
    hf, cfg, params = hf_and_jax_llava(
        llava_shaped_hf_config(args.width_v, args.width_t, args.vocab), unstack=False)
    cfg7b = LlavaConfig.from_hf(llava_shaped_hf_config(1024, 4096, 32064).to_dict())
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = synthetic_batch(cfg, args.batch, args.text_tokens)
    load, peak = load_note(), matmul_peak_gflops()
    entries = []
    for name in presets:
        entries.append(build(cfg, name, batch, jnp.dtype(args.dtype), mesh, params))
        print(f"compiled {entries[-1]['name']} in {entries[-1]['compile_s']:.1f}s", flush=True)
    fns = {e["name"]: (lambda e: lambda: run_once(e))(e) for e in entries}
    if not args.no_torch:
        tb = {k: torch.tensor(batch[k].astype(np.int64 if batch[k].dtype.kind == "i" else
                                              batch[k].dtype)) for k in ("input_ids", "labels",
                                                                         "pixel_values")}
        question = args.text_tokens // 3
        with torch.no_grad():       # the peer's step-1 losses, on the untrained weights
            for e in entries:
                e["peer_loss_step1"] = float(peer_loss(hf, tb["input_ids"], tb["pixel_values"],
                                                       tb["labels"], e["reduction"], PREFIX,
                                                       question))
        trainer = PeerTrainer(hf, tb, PREFIX, question)
        fns.update({("torch", e["name"]): (lambda red: lambda: trainer.step(red))(e["reduction"])
                    for e in entries})
    for e in entries:
        e["loss_step1"] = run_once(e)            # step 1 (also the warm-up)
    record = {}
    time_round_robin(fns, repeats=args.rounds, record=record)
    for e in entries:
        e["times"] = record[e["name"]]
        e["torch_times"] = record.get(("torch", e["name"]))
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
        flops = args.batch * analytic_train_flops(cfg, args.text_tokens, red)
        mem = e["memory"].get("xla_peak_bytes", 0) / 2 ** 20
        rows.append([e["name"], f"{avg:.2f}", f"{t * 1e3:.0f}", f"{(t / full_t - 1) * 100:+.1f}%",
                     f"{PAPER[e['name']]:+d}%" if e["name"] in PAPER else "-",
                     f"{(flops_ratio - 1) * 100:+.1f}%", *roofline_cells(flops, t, peak),
                     f"{mem:.0f}", f"{e['compile_s']:.0f}"])
        peer = {}
        if e.get("torch_times"):
            tp = statistics.median(e["torch_times"])
            peer = {"torch": {"step_s_median": tp, "step_s_all": e["torch_times"],
                              "loss_step1": e["peer_loss_step1"], **roofline(flops, tp, peak)},
                    "torch_over_jax": tp / t,
                    "loss_step1_abs_diff": abs(e["peer_loss_step1"] - e["loss_step1"])}
            rows[-1] += [f"{tp * 1e3:.0f}", *roofline_cells(flops, tp, peak), f"{tp / t:.2f}",
                         f"{peer['loss_step1_abs_diff']:.1e}"]
        results.append({**peer, "loss_step1": e["loss_step1"], **roofline(flops, t, peak),
"reduction": e["name"], "avg_visual_tokens": avg, "step_s_median": t,
                        "step_s_all": e["times"], "change_vs_full": t / full_t - 1,
                        "paper_change": PAPER.get(e["name"], 0) / 100,
                        "analytic_7b_flops_change": flops_ratio - 1, "memory": e["memory"],
                        "compile_s": e["compile_s"], "layout": {
                            "length": e["layout"].length,
                            "segment_lengths": e["layout"].segment_lengths}})
    print(f"train step, batch {args.batch}, widths {args.width_v}/{args.width_t}, vocab "
          f"{args.vocab}, {args.dtype}, median of {args.rounds}, {load} at start; GFLOP/s "
          f"against the measured {peak:.0f} GFLOP/s matmul peak")
    headers = ["reduction", "avg vis", "step ms", "vs full", "paper", "7B FLOPs", "GFLOP/s",
               "of peak", "peak MiB", "compile s"]
    if not args.no_torch:
        headers += ["torch ms", "torch GFLOP/s", "torch of peak", "torch/JAX", "|dloss| step 1"]
    print_table(headers, rows)
    path = write_json("train_step_quick.json" if args.quick else "train_step.json", {
        "what": "train step (fwd + bwd + AdamW), finetune recipe, remat, one device",
        "shape": {"patches": cfg.vision.num_patches, "clip_layers": cfg.vision.num_hidden_layers,
                  "llm_layers": cfg.text.num_hidden_layers, "width_v": args.width_v,
                  "width_t": args.width_t, "vocab": args.vocab},
        "batch": args.batch, "text_tokens": args.text_tokens, "rounds": args.rounds,
        "dtype": args.dtype, "device": str(jax.devices()[0]), "gpu_peak_bytes": gpu_peak,
        "load_at_start": load, "matmul_peak_gflops": peak,
        "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
