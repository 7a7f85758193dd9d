"""Cost of each method-zoo selection function alone, at LLaVA-1.5 size (docs/BASELINES.md §8).

Every function is timed by itself, jitted, after a warm-up call, as the median
of `--repeats` calls (inputs already on the device; results waited for); the
functions of one (batch, budget) group are timed in interleaved rounds. Shapes
are LLaVA-1.5-7B's: 576 patches; width 1024 for the tower-side method
(VisPruner's CLIP features), 4096 for the projector-side ones (DivPrune,
CDPruner's similarity, VScan's merge, pool); DART reads one layer's hidden
states [S, 4096] and keys [32, S, 128] with S = 35 + 576 + 40, batched with
`jax.vmap`; CDPruner's CLIP embeddings are 768 wide. Inputs are float32.

    python bench/selection_cost.py [--batches 1 8] [--budgets 64 128 192] [--repeats 7]

Prints a table and writes bench/results/selection_cost.json.
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

from bench.common import print_table, write_json
from duet_jax.reduction import (cdpruner_select, dart_kept_count, dart_select, dart_token_topk,
                                divprune_select, pool_side, pool_tokens, random_select,
                                vispruner_select, vscan_counts, vscan_stage1)

N, WIDTH_V, WIDTH_T, HEADS_V, LAYERS_V = 576, 1024, 4096, 16, 24
HEADS_T, HEAD_DIM, CLIP_EMBED = 32, 128, 768
IMAGE_START, TEXT_AFTER = 35, 40
SEQ = IMAGE_START + N + TEXT_AFTER
VSCAN_T = {64: 96, 128: 192, 192: 288}        # stage-1 T per average budget (docs/BASELINES.md §6)


def _inputs(batch: int, seed: int = 0) -> dict:
    keys = jax.random.split(jax.random.key(seed), 8)
    normal = lambda k, *s: jax.random.normal(k, s, jnp.float32)
    softmax = lambda k, *s: jax.nn.softmax(2.0 * normal(k, *s), axis=-1)
    return {
        "projected": normal(keys[0], batch, N, WIDTH_T),
        "tower": normal(keys[1], batch, N, WIDTH_V),
        "cls_attn": softmax(keys[2], batch, HEADS_V, N),
        "cls_attn_layers": softmax(keys[3], LAYERS_V, batch, HEADS_V, N),
        "image_embeds": normal(keys[4], batch, N, CLIP_EMBED),
        "text_embeds": normal(keys[5], 1, CLIP_EMBED),
        "hidden": normal(keys[6], batch, SEQ, WIDTH_T),
        "keys": normal(keys[7], batch, HEADS_T, SEQ, HEAD_DIM),
    }


def cases(x: dict, budget: int, batch: int) -> dict:
    """name -> (where it acts, tokens kept, thunk)."""
    topk = dart_token_topk(8, budget)
    dart_batched = jax.jit(jax.vmap(lambda h, k: dart_select(h, k, token_topk=topk)))
    vscan_t = VSCAN_T.get(budget, budget)
    return {
        "divprune": ("projector", budget, lambda: divprune_select(x["projected"], budget)),
        "dart": ("LLM layer 2", dart_kept_count(4, 4, topk),
                 lambda: dart_batched(x["hidden"], x["keys"])),
        "vispruner": ("tower", budget,
                      lambda: vispruner_select(x["tower"], x["cls_attn"], budget, 0.5)),
        "cdpruner": ("projector", budget,
                     lambda: cdpruner_select(x["projected"], x["image_embeds"],
                                             x["text_embeds"], budget)),
        "vscan stage 1": ("tower attn + projector", vscan_counts(vscan_t)["kept"],
                          lambda: vscan_stage1(x["cls_attn_layers"], x["projected"], vscan_t)),
        "random": ("projector", budget, lambda: random_select(jax.random.key(0), batch, budget)),
        "pool": ("projector", pool_side(budget) ** 2,
                 lambda: pool_tokens(x["projected"], budget)),
    }


def time_interleaved(fns: dict, repeats: int) -> dict:
    """name -> (median s, min s, first-call s incl. compile). After one warm-up call
    each, the functions are timed in interleaved rounds, so drifting load on a
    shared machine hits them alike."""
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t), first[name]) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--budgets", type=int, nargs="*", default=[64, 128, 192])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="selection_cost.json")
    args = ap.parse_args()

    rows, results = [], []
    for batch in args.batches:
        x = _inputs(batch)
        for budget in args.budgets:
            group = cases(x, budget, batch)
            timed = time_interleaved({name: fn for name, (_, _, fn) in group.items()},
                                     args.repeats)
            for name, (where, kept, _) in group.items():
                median, best, first = timed[name]
                results.append({"method": name, "acts_on": where, "batch": batch,
                                "budget": budget, "kept": kept, "median_s": median,
                                "min_s": best, "first_call_s": first})
                rows.append([name, where, batch, budget, kept, f"{1e3 * median:.2f}",
                             f"{1e3 * median / batch:.2f}", f"{first:.1f}"])
                print(f"  {name} b{batch} {budget}: {1e3 * median:.2f} ms", flush=True)
    print()
    print_table(["method", "acts on", "batch", "budget", "kept", "median ms",
                 "ms / sample", "compile+1st s"], rows)
    path = write_json(args.out, {
        "what": "selection function alone, jitted, median after warm-up",
        "shape": {"patches": N, "width_tower": WIDTH_V, "width_projector": WIDTH_T,
                  "clip_heads": HEADS_V, "clip_layers": LAYERS_V, "llm_seq": SEQ,
                  "llm_kv_heads": HEADS_T, "head_dim": HEAD_DIM, "clip_embed": CLIP_EMBED},
        "dtype": "float32", "repeats": args.repeats,
        "device": str(jax.devices()[0]), "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
