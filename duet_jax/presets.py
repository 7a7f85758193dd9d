"""`duet_jax.presets` (docs/API.md §3): the named reduction presets and their configs.

The definitions live in `duet_jax.reduction.presets`; this module is the public
spelling, so both `duet_jax.presets.PRESETS` and `from duet_jax.presets import
get_preset` work.
"""
from duet_jax.reduction.presets import (PRESET_TARGETS, PRESETS, ReductionConfig, Stage1Config,
                                        Stage2Config, average_visual_tokens, from_dict,
                                        get_preset, resolve_reduction)

__all__ = ["PRESET_TARGETS", "PRESETS", "ReductionConfig", "Stage1Config", "Stage2Config",
           "average_visual_tokens", "from_dict", "get_preset", "resolve_reduction"]
