"""Shared pieces of the benchmarks: the LLaVA-shaped config, timing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def llava_shaped_hf_config(width_v=256, width_t=512, vocab=32064):
    """LLaVA-1.5-7B's shape (576 patches, 24 CLIP layers, 32 LLM layers, MHA) with
    reduced widths so it runs on a laptop CPU; an HF `LlavaConfig`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    vc = CLIPVisionConfig(hidden_size=width_v, intermediate_size=4 * width_v, num_hidden_layers=24,
                          num_attention_heads=width_v // 64, image_size=336, patch_size=14,
                          projection_dim=width_v)
    tc = LlamaConfig(vocab_size=vocab, hidden_size=width_t, intermediate_size=int(2.6875 * width_t),
                     num_hidden_layers=32, num_attention_heads=width_t // 64,
                     num_key_value_heads=width_t // 64, max_position_embeddings=4096)
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_index=32000,
                       image_seq_length=576)


def time_round_robin(fns: dict, *, repeats=5) -> dict:
    """Median wall seconds per named thunk, timed in interleaved rounds so that drifting
    machine load hits every setting alike (ratios stay meaningful on a shared CPU)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def write_json(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    payload = dict(payload, machine={"platform": platform.platform(), "cpus": os.cpu_count(),
                                     "jax": jax.__version__, "backend": jax.default_backend()})
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
