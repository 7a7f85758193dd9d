"""Prefill time of the LLaVA-shaped model: JAX vs HF PyTorch (unreduced), and every
reduction preset against the unreduced JAX model beside its analytic FLOP bound.

    python bench/prefill.py [--batch 1] [--text-tokens 64] [--repeats 5]

Prints a table and writes bench/results/prefill.json.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bench.common import llava_shaped_hf_config, print_table, time_round_robin, write_json
from bench.flops import prefill_flops
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import get_preset

PRESETS = ["llava15-duet-192", "llava15-duet-128", "llava15-duet-64",
           "llava15-visionzip-192", "llava15-visionzip-128", "llava15-visionzip-64",
           "llava15-pdrop-192", "llava15-pdrop-128", "llava15-pdrop-64",
           "llava15-fastv-192", "llava15-fastv-128", "llava15-fastv-64"]


@functools.partial(jax.jit, static_argnames=("module", "reduction"))
def jax_prefill(module, params, ids, pixels, mask, reduction):
    fwd = module.forward(params, ids, pixels, mask, reduction=reduction)
    seq = fwd.sequence
    last = seq.valid.sum(1) - 1
    h = jnp.take_along_axis(seq.hidden, last[:, None, None], axis=1)
    return module.text.head(params["text"], h)



def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    hf_cfg = llava_shaped_hf_config()
    cfg = LlavaConfig.from_hf(hf_cfg.to_dict())
    module = LlavaModel(cfg)
    params = module.init(jax.random.key(0))
    b, n = args.batch, cfg.image_seq_length
    g = np.random.default_rng(0)
    ids = g.integers(3, 30000, (b, n + args.text_tokens)).astype(np.int32)
    ids[:, 5:5 + n] = cfg.image_token_index
    mask = np.ones_like(ids)
    pixels = g.standard_normal((b, 3, 336, 336)).astype(np.float32)
    dev = [jnp.asarray(x) for x in (ids, pixels, mask)]

    base_flops = prefill_flops(cfg, args.text_tokens)["total"]
    run = lambda red: (lambda: jax_prefill(module, params, *dev, red).block_until_ready())
    fns = {"none": run(None)}
    fns.update({name: run(get_preset(name)) for name in args.presets})
    if not args.no_torch:
        from transformers import LlavaForConditionalGeneration
        hf = LlavaForConditionalGeneration._from_config(hf_cfg, attn_implementation="sdpa").eval()
        tids, tpix = torch.tensor(ids.astype(np.int64)), torch.tensor(pixels)

        def torch_prefill():
            with torch.no_grad():
                h = hf.model(input_ids=tids, pixel_values=tpix).last_hidden_state[:, -1]
                return hf.lm_head(h)
        fns["torch_none"] = torch_prefill
    times = time_round_robin(fns, repeats=args.repeats)
    t_full = times["none"]
    results = {"none": {"seconds": t_full, "gflops": base_flops / 1e9}}
    rows = [["none (JAX)", 576, f"{t_full*1e3:.1f}", "1.00", "1.00", "-"]]
    if "torch_none" in times:
        t_torch = times["torch_none"]
        results["torch_none"] = {"seconds": t_torch, "jax_speedup_over_torch": t_torch / t_full}
        rows.append(["none (HF PyTorch sdpa)", 576, f"{t_torch*1e3:.1f}",
                     f"{t_full / t_torch:.2f}", "-", "-"])
    from duet_jax.reduction import average_visual_tokens
    for name in args.presets:
        red = get_preset(name)
        t = times[name]
        bound = base_flops / prefill_flops(cfg, args.text_tokens, red)["total"]
        speedup = t_full / t
        avg = average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers)
        results[name] = {"seconds": t, "speedup": speedup, "flop_bound": bound,
                         "fraction_of_bound": speedup / bound, "avg_tokens": avg}
        rows.append([name, f"{avg:.2f}", f"{t*1e3:.1f}", f"{speedup:.2f}", f"{bound:.2f}",
                     f"{speedup / bound:.2f}"])
    print(f"prefill, batch {b}, {args.text_tokens} text tokens, LLaVA-shaped "
          f"(24 CLIP / 32 LLM layers, widths {cfg.vision.hidden_size}/{cfg.text.hidden_size}), "
          f"{jax.default_backend()}")
    print_table(["setting", "avg vis tok", "ms", "speedup", "FLOP bound", "of bound"], rows)
    path = write_json(f"prefill_b{b}.json", {"batch": b, "text_tokens": args.text_tokens,
                                       "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
