"""The GPU suite: LLaVA-1.5-7B-shaped prefill (time to first token and throughput), JAX
beside its PyTorch peer, unreduced and DUET-192/128/64, at batch 1/8/32.

Widths are the real 7B ones (CLIP-L/14-336 + Vicuna-7B: `bench.common.llava_7b_hf_config`),
weights random (one HF model, converted into JAX by the checkpoint converter), bf16.
JAX runs the library's prefill (`bench.prefill.jax_prefill`, stacked layers: one scan
per segment, fast to compile at 32 layers); the peer runs the same weights through HF
modules with sdpa attention (`bench.torch_peer.reduced_prefill`). Per setting: TTFT (the
batch's prefill up to first-token logits), samples/s, achieved TFLOP/s against this
device's measured bf16 matmul peak, peak memory, and max |dlogit| between the two.
It prints which attention kernel XLA compiled (`jax.nn.dot_product_attention`: cudnn
or xla, read from the compiled HLO) and which sdpa backends torch has enabled.

    bash bench/gpu.sh                 # the full suite (one H100: well under 8 minutes)
    python bench/gpu.py --small       # tiny widths, batch 1/2, float32, CPU: seconds

No package is installed or downloaded: it needs jax, torch and transformers as found.
Writes bench/results/gpu/prefill[_small].json (or `--out DIR`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bench.common import (RESULTS, hf_and_jax_llava, llava_7b_hf_config, llava_shaped_hf_config,
                          load_note, matmul_peak_gflops, print_table, prompt_batch, roofline,
                          time_round_robin, write_json)
from bench.flops import prefill_flops
from bench.prefill import jax_prefill
from bench.torch_peer import reduced_prefill
from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import get_preset

SETTINGS = ["none", "llava15-duet-192", "llava15-duet-128", "llava15-duet-64"]
IMAGE_AT = 35


def attention_kernel(compiled_text: str) -> str:
    """Which kernel `jax.nn.dot_product_attention` became in a compiled executable."""
    return "cudnn" if "cudnn$fmha" in compiled_text or "__cudnn" in compiled_text else "xla"


def torch_sdpa_backends() -> dict:
    if not torch.cuda.is_available():
        return {"device": "cpu"}
    b = torch.backends.cuda
    return {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
            "cudnn": getattr(b, "cudnn_sdp_enabled", lambda: None)(), "math": b.math_sdp_enabled()}


def jax_peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def torch_peak(fn):
    """Peak bytes torch allocated during one call of fn (None on CPU)."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true",
                    help="tiny widths, batch 1/2, float32: checks the suite end to end on a CPU")
    ap.add_argument("--batches", type=int, nargs="+")
    ap.add_argument("--settings", nargs="+", default=SETTINGS)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(RESULTS, "gpu"))
    args = ap.parse_args(argv)
    batches = args.batches or ([1, 2] if args.small else [1, 8, 32])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.small:
        hf_cfg, dtype, tdtype = llava_shaped_hf_config(64, 128, 1024), jnp.float32, torch.float32
        args.repeats = min(args.repeats, 1)
    else:
        hf_cfg, dtype, tdtype = llava_7b_hf_config(), jnp.bfloat16, torch.bfloat16
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
          f"on {device}, {load_note()}", flush=True)
    started = time.perf_counter()
    hf, cfg, params = hf_and_jax_llava(hf_cfg, torch_dtype=tdtype, device=device,
                                       jax_dtype=dtype, unstack=False)
    module = LlavaModel(cfg, dtype=dtype, param_dtype=dtype)
    peak = matmul_peak_gflops(4096 if not args.small else 1024, dtype)
    print(f"built in {time.perf_counter() - started:.0f}s; matmul peak {peak / 1e3:.3g} TFLOP/s "
          f"({jnp.dtype(dtype).name}); torch sdpa {torch_sdpa_backends()}", flush=True)
    settings = {name: None if name == "none" else get_preset(name) for name in args.settings}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results, rows, kernels = {}, [], set()
    for b in batches:
        ids, mask, pixels = prompt_batch(cfg, b, args.text_tokens, IMAGE_AT)
        dev = [jnp.asarray(ids), jnp.asarray(pixels, dtype), jnp.asarray(mask)]
        tids = torch.tensor(ids.astype(np.int64), device=device)
        tpix = torch.tensor(pixels, device=device, dtype=tdtype)
        fns, memory = {}, {}
        for name, red in settings.items():
            compiled = jax_prefill.lower(module, params, *dev, red).compile()
            kernels.add(attention_kernel(compiled.as_text()))
            mem = compiled.memory_analysis()
            memory[("jax", name)] = None if mem is None else int(
                mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
            fns[("jax", name)] = (lambda c: lambda: c(params, *dev).block_until_ready())(compiled)
            fns[("torch", name)] = (lambda red: lambda: (reduced_prefill(
                hf, tids, tpix, red, IMAGE_AT), sync()))(red)
            memory[("torch", name)] = torch_peak(fns[("torch", name)])
        times = time_round_robin(fns, repeats=args.repeats)
        for name, red in settings.items():
            ours = np.asarray(jax_prefill(module, params, *dev, red).astype(jnp.float32))[:, 0]
            ref = reduced_prefill(hf, tids, tpix, red, IMAGE_AT).float().cpu().numpy()
            flops = b * prefill_flops(cfg, args.text_tokens, red)["total"]
            entry = {"batch": b, "setting": name, "flops": flops,
                     "max_abs_logit_diff": float(np.abs(ours - ref).max()),
                     "argmax_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean())}
            row = [b, name]
            for impl in ("jax", "torch"):
                t = times[(impl, name)]
                entry[impl] = {"ttft_s": t, "samples_per_s": b / t,
                               "peak_bytes": memory[(impl, name)], **roofline(flops, t, peak)}
                mib = memory[(impl, name)]
                row += [f"{t * 1e3:.1f}", f"{b / t:.1f}", f"{entry[impl]['gflops'] / 1e3:.3g}",
                        f"{100 * entry[impl]['of_peak']:.0f}%",
                        "-" if mib is None else f"{mib / 2 ** 30:.1f}"]
            entry["torch_over_jax"] = times[("torch", name)] / times[("jax", name)]
            results[f"b{b}/{name}"] = entry
            rows.append(row + [f"{entry['torch_over_jax']:.2f}",
                               f"{entry['max_abs_logit_diff']:.1e}"])
            print(f"  b{b} {name}: jax {times[('jax', name)] * 1e3:.1f} ms, torch "
                  f"{times[('torch', name)] * 1e3:.1f} ms", flush=True)
    kernel = "/".join(sorted(kernels))
    print(f"\nprefill (TTFT), widths {cfg.vision.hidden_size}/{cfg.text.hidden_size}, "
          f"{args.text_tokens} text tokens, {jnp.dtype(dtype).name}, median of {args.repeats}; "
          f"jax.nn.dot_product_attention compiled to: {kernel}; TFLOP/s against the measured "
          f"{peak / 1e3:.3g} TFLOP/s matmul peak; GiB: JAX = XLA's compiled estimate, "
          "torch = allocator peak (both with the weights)")
    print_table(["batch", "setting", "JAX ms", "JAX smp/s", "JAX TF/s", "JAX of peak", "JAX GiB",
                 "torch ms", "torch smp/s", "torch TF/s", "torch of peak", "torch GiB",
                 "torch/JAX", "max |dlogit|"], rows)
    path = write_json("prefill_small.json" if args.small else "prefill.json", {
        "what": "LLaVA-1.5-7B-shaped prefill, JAX vs HF sdpa peer", "small": args.small,
        "dtype": jnp.dtype(dtype).name, "text_tokens": args.text_tokens,
        "repeats": args.repeats, "matmul_peak_gflops": peak, "jax_attention_kernel": kernel,
        "torch_sdpa": torch_sdpa_backends(), "torch": torch.__version__,
        "device": jax.devices()[0].device_kind, "jax_peak_bytes_in_use": jax_peak_bytes(),
        "wall_seconds": time.perf_counter() - started, "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
