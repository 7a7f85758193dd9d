"""Model handles, one per family, all with the contract of `duet_jax.api.base.Handle`;
`load_llava` (alias `load`) picks the family from the checkpoint's config.json."""
from duet_jax.api.base import Handle
from duet_jax.api.llava import Llava
from duet_jax.api.llava_next import LlavaNext
from duet_jax.api.qwen25vl import Qwen25VL, load_qwen25vl
from duet_jax.api.registry import FAMILIES, load, load_llava
from duet_jax.api.video_llava import VideoLlava

__all__ = ["FAMILIES", "Handle", "Llava", "LlavaNext", "Qwen25VL", "VideoLlava", "load",
           "load_llava", "load_qwen25vl"]
