"""Peak memory of `python -m convert` against the largest shard and the output size.

Builds a random multi-shard legacy-HF LLaVA checkpoint (a few hundred MB) in a
temp dir, runs the conversion (and the `--to hf` export back) in a subprocess,
and reads the child's peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`, one
fresh measuring process per run). A subprocess that only imports the same
libraries gives the baseline RSS; "working set" = peak - baseline, reported as output + k x largest shard.

    python bench/convert_memory.py [--text-layers 6] [--shard-mb 100]

Prints a table and writes bench/results/convert_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from duet_jax.checkpoints import layouts  # noqa: E402
from duet_jax.checkpoints.load import llava_config  # noqa: E402
from duet_jax.checkpoints.reader import write_safetensors  # noqa: E402

MB = 2 ** 20


def hf_config(text_layers: int) -> dict:
    text = dict(model_type="llama", vocab_size=32064, hidden_size=1024, intermediate_size=2816,
                num_hidden_layers=text_layers, num_attention_heads=16, num_key_value_heads=16,
                head_dim=64, hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5,
                rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False,
                tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    vision = dict(model_type="clip_vision_model", hidden_size=512, intermediate_size=2048,
                  num_hidden_layers=6, num_attention_heads=8, num_channels=3, image_size=336,
                  patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return dict(model_type="llava", architectures=["LlavaForConditionalGeneration"],
                text_config=text, vision_config=vision, image_token_index=32000,
                projector_hidden_act="gelu", vision_feature_layer=-2,
                vision_feature_select_strategy="default", multimodal_projector_bias=True,
                image_seq_length=576, tie_word_embeddings=False, dtype="float32")


def build_checkpoint(directory: str, text_layers: int, shard_bytes: int) -> dict:
    """Random fp32 weights in the legacy HF names, sharded greedily with an index file."""
    config = hf_config(text_layers)
    shapes = layouts.leaf_shapes(llava_config(config))
    tensors = []
    for entry, shape in shapes.items():
        for layer in (range(shape[0]) if entry.stacked else [None]):
            per = shape[1:] if entry.stacked else shape
            tensors.append((layouts.torch_name(entry, layer), layouts.torch_shape(per, entry.kind)))
    rng = np.random.default_rng(0)
    shards, size = [[]], 0
    for key, shape in tensors:
        nbytes = int(np.prod(shape)) * 4
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += nbytes
    weight_map, sizes = {}, []
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        entries = [(k, s, np.float32, (lambda s=s: rng.standard_normal(s, dtype=np.float32)))
                   for k, s in shard]
        write_safetensors(os.path.join(directory, name), entries)
        sizes.append(os.path.getsize(os.path.join(directory, name)))
        weight_map.update({k: name for k, _ in shard})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    largest_tensor = max(int(np.prod(s)) * 4 for _, s in tensors)
    return {"shards": len(sizes), "largest_shard_bytes": max(sizes), "total_bytes": sum(sizes),
            "largest_tensor_bytes": largest_tensor}


def peak_rss(cmd: list) -> tuple[int, float]:
    """Run `cmd` inside a fresh measuring process; -> (child's peak RSS bytes, seconds)."""
    probe = ("import resource, subprocess, sys, time; t = time.time(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t, r.returncode)")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {out[2]})")
    return int(out[0]) * 1024, float(out[1])   # ru_maxrss is KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-layers", type=int, default=6)
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "convert_memory.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="convert_memory_") as tmp:
        src = os.path.join(tmp, "hf")
        os.makedirs(src)
        t = time.time()
        info = build_checkpoint(src, args.text_layers, args.shard_mb * MB)
        build_s = time.time() - t
        py = sys.executable
        baseline, _ = peak_rss([py, "-c", "import convert, jax, jax.numpy, orbax.checkpoint, tqdm"])
        runs = {}
        for name, cmd in (
                ("to_orbax", [py, "-m", "convert", "--src", src, "--dst", os.path.join(tmp, "jax")]),
                ("to_hf", [py, "-m", "convert", "--src", os.path.join(tmp, "jax"),
                           "--dst", os.path.join(tmp, "back"), "--to", "hf"])):
            rss, secs = peak_rss(cmd)
            runs[name] = {"peak_rss_bytes": rss, "working_set_bytes": rss - baseline, "seconds": secs}
    result = dict(info, baseline_rss_bytes=baseline, build_seconds=build_s, runs=runs,
                  output_bytes=info["total_bytes"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    print(f"checkpoint: {info['total_bytes'] / MB:.0f} MiB fp32 in {info['shards']} shards, "
          f"largest {info['largest_shard_bytes'] / MB:.0f} MiB (largest tensor "
          f"{info['largest_tensor_bytes'] / MB:.0f} MiB); import baseline RSS "
          f"{baseline / MB:.0f} MiB")
    out_b, shard_b = info["total_bytes"], info["largest_shard_bytes"]
    print(f"{'run':<10}{'peak RSS':>10}{'working set':>13}{'= output +':>12}{'x largest shard':>17}{'time':>8}")
    for name, r in runs.items():
        ws = r["working_set_bytes"]
        r["extra_over_output_in_shards"] = (ws - out_b) / shard_b
        print(f"{name:<10}{r['peak_rss_bytes'] / MB:>8.0f}Mi{ws / MB:>11.0f}Mi"
              f"{(ws - out_b) / MB:>10.0f}Mi{(ws - out_b) / shard_b:>17.2f}{r['seconds']:>7.1f}s")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
