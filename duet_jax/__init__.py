"""duet_jax: DUET-VLM dual-stage visual-token reduction for LLaVA-style VLMs, in JAX/Flax.

Heavy submodules load lazily, so that `eval.py score` (which must not import
JAX) can use the package.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {"load_llava": ("duet_jax.api", "load_llava"), "load": ("duet_jax.api", "load"),
         "Llava": ("duet_jax.api", "Llava"), "LlavaNext": ("duet_jax.api", "LlavaNext"),
         "VideoLlava": ("duet_jax.api", "VideoLlava"),
         "load_qwen25vl": ("duet_jax.api", "load_qwen25vl"),
         "Qwen25VL": ("duet_jax.api", "Qwen25VL"),
         "presets": ("duet_jax.presets", None),
         "reduction": ("duet_jax.reduction", None)}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'duet_jax' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


__all__ = ["load_llava", "load", "Llava", "LlavaNext", "VideoLlava", "load_qwen25vl", "Qwen25VL",
           "presets", "reduction"]
