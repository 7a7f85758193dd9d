"""Pure-JAX visual-token reduction for DUET-VLM (ALGORITHM.md §2-5, API.md §1-2).

Stage 1 (:func:`vision_merge`) merges vision tokens inside the tower; Stage 2
(:func:`text_image_scores`, :func:`keep_top_image_tokens` and the drop map)
ranks and drops image tokens inside the LM. Configs and named presets live
in :mod:`duet_jax.reduction.presets`. Nothing here imports the models.
"""
from .baselines import (PDROP_DEFAULT_LAYERS, PDROP_DEFAULT_RATIOS, average_image_tokens,
                        fastv_keep_count, fastv_scores, segment_bounds, stage_counts)
from .presets import (PRESET_TARGETS, PRESETS, ReductionConfig, Stage1Config, Stage2Config,
                      average_visual_tokens, from_dict, get_preset, resolve_reduction)
from .queries import (eval_query_mask, official_query_mask, stage2_query_mask, train_query_mask,
                      train_query_mask_host)
from .stage1 import MergeResult, vision_merge, vision_merge_size
from .stage2 import (DropResult, apply_drop, drop_gather_index, keep_top_image_tokens,
                     keep_top_per_sample, reduced_lengths, scores_from_qk, segment_length,
                     text_image_scores)

__all__ = [
    "vision_merge", "vision_merge_size", "MergeResult",
    "text_image_scores", "scores_from_qk", "keep_top_image_tokens", "keep_top_per_sample",
    "official_query_mask", "eval_query_mask", "train_query_mask", "train_query_mask_host",
    "stage2_query_mask", "drop_gather_index", "apply_drop", "DropResult", "reduced_lengths",
    "segment_length", "stage_counts", "segment_bounds", "average_image_tokens",
    "fastv_keep_count", "fastv_scores", "PDROP_DEFAULT_LAYERS", "PDROP_DEFAULT_RATIOS",
    "Stage1Config", "Stage2Config", "ReductionConfig", "PRESETS", "PRESET_TARGETS",
    "get_preset", "resolve_reduction", "from_dict", "average_visual_tokens",
]
