"""Prefill with the CPU tiled attention off (dot_product_attention, 'before') and on
(`duet_jax.models.attention.blocked_attention`, 'after'), beside the PyTorch peer:
both JAX variants compiled in one process, all three timed round-robin.

    python bench/prefill_attention.py [--batch 8] [--presets none llava15-duet-64] [--repeats 2]
                                      [--small]

LLaVA-shaped widths 256/512, 64 text tokens. Prints one line per setting and writes
bench/results/prefill_attention_b{batch}.json.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import torch

import duet_jax.models.attention as attention
from bench.common import (hf_and_jax_llava, llava_shaped_hf_config, load_note, prompt_batch,
                          time_round_robin, write_json)
from bench.prefill import IMAGE_AT, jax_prefill
from bench.torch_peer import reduced_prefill
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import get_preset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--presets", nargs="+", default=["none", "llava15-duet-64"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="widths 64/128 (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    widths = (64, 128, 1024) if args.small else (256, 512, 32064)
    hf, cfg, params = hf_and_jax_llava(llava_shaped_hf_config(*widths))
    module = LlavaModel(cfg)
    ids, mask, pixels = prompt_batch(cfg, args.batch, 64, IMAGE_AT)
    dev = [jnp.asarray(x) for x in (ids, pixels, mask)]
    tids, tpix = torch.tensor(ids.astype(np.int64)), torch.tensor(pixels)
    load = load_note()
    fns, results = {}, {}
    for name in args.presets:
        red = None if name == "none" else get_preset(name)
        ref = reduced_prefill(hf, tids, tpix, red, IMAGE_AT).numpy()
        results[name] = {}
        for label, block in (("before", 0), ("after", 128)):
            attention.CPU_ATTENTION_BLOCK = block       # read at trace time: a fresh trace each
            fresh = jax.jit(lambda p, i, x, m, red=red:
                            jax_prefill.__wrapped__(module, p, i, x, m, red))
            compiled = fresh.lower(params, *dev).compile()
            diff = np.abs(np.asarray(compiled(params, *dev))[:, 0] - ref).max()
            results[name][f"{label}_max_abs_logit_diff"] = float(diff)
            fns[(label, name)] = (lambda c: lambda: c(params, *dev).block_until_ready())(compiled)
        fns[("torch", name)] = (lambda red: lambda: reduced_prefill(hf, tids, tpix, red,
                                                                    IMAGE_AT))(red)
    attention.CPU_ATTENTION_BLOCK = 128
    t = time_round_robin(fns, repeats=args.repeats)
    for name in args.presets:
        before, after, peer = t[("before", name)], t[("after", name)], t[("torch", name)]
        results[name].update(before_s=before, after_s=after, torch_s=peer,
                             torch_over_jax_before=peer / before, torch_over_jax_after=peer / after)
        print(f"b{args.batch} {name}: before {before * 1e3:.0f} ms, after {after * 1e3:.0f} ms "
              f"({after / before:.2f}x), torch {peer * 1e3:.0f} ms; torch/JAX "
              f"{peer / before:.2f} -> {peer / after:.2f}", flush=True)
    path = write_json(f"prefill_attention_b{args.batch}{'_small' * args.small}.json", {
        "batch": args.batch, "repeats": args.repeats, "load_at_start": load,
        "results": results})
    print(f"{load} at start; wrote {path}")


if __name__ == "__main__":
    main()
