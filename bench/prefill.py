"""Prefill time of the LLaVA-shaped model, JAX beside its PyTorch peer, for the
unreduced model and every reduction preset, each against its analytic FLOP bound.

The peer is the PyTorch way of doing the same work (`bench/torch_peer.py`: HF
modules layer by layer, Stage 1 and the drops as torch gathers between layers; the
zoo methods' official selection math in torch from `bench/torch_zoo.py`) on the
same weights: the HF model is saved and loaded into JAX through the checkpoint
converter. Both report speedup over their own unreduced run and the
fraction of the FLOP bound that speedup reaches; `max |dlogit|` checks that the
two compute the same thing.

    python bench/prefill.py [--batch 1] [--text-tokens 64] [--repeats 5] [--no-torch]
                            [--width-v 256 --width-t 512 --vocab 32064]

Prints a table and writes bench/results/prefill_b{batch}.json (--name: another prefix).
CDPruner is left out: it needs the question's CLIP text tower, which this bench does
not build.
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

from bench.common import (hf_and_jax_llava, jax_prefill, llava_shaped_hf_config, load_note,
                          matmul_peak_gflops, print_table, prompt_batch, roofline, roofline_cells,
                          time_round_robin, write_json)
from bench.flops import prefill_flops
from bench.torch_zoo import peer_prefill
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import average_visual_tokens, get_preset

PRESETS = ["llava15-duet-192", "llava15-duet-128", "llava15-duet-64",
           "llava15-visionzip-192", "llava15-visionzip-128", "llava15-visionzip-64",
           "llava15-pdrop-192", "llava15-pdrop-128", "llava15-pdrop-64",
           "llava15-fastv-192", "llava15-fastv-128", "llava15-fastv-64"]
# the method zoo (docs/BASELINES.md §9; cdpruner needs a CLIP text tower), JAX and peer
ZOO = [f"llava15-{m}-{b}" for m in ("divprune", "dart", "vispruner", "vscan", "random", "pool")
       for b in (192, 128, 64)]
IMAGE_AT = 5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", nargs="*", default=PRESETS + ZOO)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--name", default="prefill", help="results file prefix "
                    "(bench/results/{name}_b{batch}.json)")
    ap.add_argument("--width-v", type=int, default=256, help="CLIP width (multiple of 64)")
    ap.add_argument("--width-t", type=int, default=512, help="LLM width (multiple of 64)")
    ap.add_argument("--vocab", type=int, default=32064)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    hf_cfg = llava_shaped_hf_config(width_v=args.width_v, width_t=args.width_t, vocab=args.vocab)
    hf, cfg, params = hf_and_jax_llava(hf_cfg)   # unstacked: load_llava's inference layout
    module = LlavaModel(cfg)
    b = args.batch
    ids, mask, pixels = prompt_batch(cfg, b, args.text_tokens, IMAGE_AT)
    dev = [jnp.asarray(x) for x in (ids, pixels, mask)]
    tids, tpix = torch.tensor(ids.astype(np.int64)), torch.tensor(pixels)

    settings = {"none": None, **{name: get_preset(name) for name in args.presets}}
    jax_run = lambda red: (lambda: jax_prefill(module, params, *dev, red).block_until_ready())
    torch_run = lambda red: (lambda: peer_prefill(hf, tids, tpix, red, IMAGE_AT))
    fns = {("jax", name): jax_run(red) for name, red in settings.items()}
    peer = {} if args.no_torch else settings
    fns.update({("torch", name): torch_run(red) for name, red in peer.items()})
    load = load_note()
    times = time_round_robin(fns, repeats=args.repeats)
    peak = matmul_peak_gflops()

    base_flops = prefill_flops(cfg, args.text_tokens)["total"]
    results, rows = {"gflops_unreduced": base_flops / 1e9, "matmul_peak_gflops": peak}, []
    for name, red in settings.items():
        flops = b * prefill_flops(cfg, args.text_tokens, red)["total"]
        bound = b * base_flops / flops
        avg = (cfg.image_seq_length if red is None else
               average_visual_tokens(red, cfg.vision.num_patches, cfg.text.num_hidden_layers))
        entry = {"avg_tokens": avg, "flop_bound": bound}
        row = [name, f"{avg:.2f}", f"{bound:.2f}"]
        for impl in ("jax", "torch"):
            if (impl, name) not in times:
                continue
            t, t_full = times[(impl, name)], times[(impl, "none")]
            entry[impl] = {"seconds": t, "speedup": t_full / t,
                           "fraction_of_bound": t_full / t / bound,
                           **roofline(flops, t, peak)}
            row += [f"{t*1e3:.0f}", f"{t_full / t / bound:.2f}", *roofline_cells(flops, t, peak)]
        if name in peer:
            ours = np.asarray(jax_prefill(module, params, *dev, red))[:, 0]
            ref = peer_prefill(hf, tids, tpix, red, IMAGE_AT).numpy()
            entry["max_abs_logit_diff"] = float(np.abs(ours - ref).max())
            entry["torch_over_jax"] = times[("torch", name)] / times[("jax", name)]
            row += [f"{entry['torch_over_jax']:.2f}", f"{entry['max_abs_logit_diff']:.1e}"]
        results[name] = entry
        rows.append(row)
    print(f"prefill, batch {b}, {args.text_tokens} text tokens, LLaVA-shaped "
          f"(24 CLIP / 32 LLM layers, widths {cfg.vision.hidden_size}/{cfg.text.hidden_size}), "
          f"{jax.default_backend()}, {load} at start; 'of bound' = speedup over the same "
          "implementation's unreduced run / FLOP bound; GFLOP/s against the measured "
          f"{peak:.0f} GFLOP/s matmul peak")
    headers = ["setting", "avg vis tok", "FLOP bound", "JAX ms", "JAX of bound", "JAX GFLOP/s",
               "JAX of peak"]
    if not args.no_torch:
        headers += ["torch ms", "torch of bound", "torch GFLOP/s", "torch of peak", "torch/JAX",
                    "max |dlogit|"]
    print_table(headers, rows)
    path = write_json(f"{args.name}_b{b}.json", {"batch": b, "text_tokens": args.text_tokens,
                                             "repeats": args.repeats, "load_at_start": load,
                                             "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
