"""Pure-JAX visual-token reduction for DUET-VLM (docs/ALGORITHM.md §2-5, docs/API.md §1-2).

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

# The method zoo (docs/BASELINES.md §1-§7): DivPrune, DART, VisPruner, CDPruner and
# VScan stage-1 selections, plus the random and pooling controls.
from ._zoo import at_least_float32  # noqa: E402
from .cdpruner import cdpruner_relevance, cdpruner_select  # noqa: E402
from .controls import pool_bins, pool_side, pool_tokens, random_select  # noqa: E402
from .dart import dart_kept_count, dart_select, dart_token_topk, pyset_order  # noqa: E402
from .divprune import divprune_budget, divprune_select  # noqa: E402
from .vispruner import vispruner_counts, vispruner_schedule, vispruner_select  # noqa: E402
from .vscan import SHALLOW_LAYER, vscan_counts, vscan_select, vscan_stage1  # noqa: E402
from .zoo_config import (DART_PIVOTS, METHOD_NEEDS, SELECT_METHODS, ZOO_METHODS,  # noqa: E402
                         SelectConfig, dart_topk, zoo_method)

__all__ = [
    "vision_merge", "vision_merge_size", "MergeResult",
    "text_image_scores", "scores_from_qk", "keep_top_image_tokens", "keep_top_per_sample",
    "official_query_mask", "eval_query_mask", "train_query_mask", "train_query_mask_host",
    "stage2_query_mask", "drop_gather_index", "apply_drop", "DropResult", "reduced_lengths",
    "segment_length", "stage_counts", "segment_bounds", "average_image_tokens",
    "fastv_keep_count", "fastv_scores", "PDROP_DEFAULT_LAYERS", "PDROP_DEFAULT_RATIOS",
    "Stage1Config", "Stage2Config", "ReductionConfig", "PRESETS", "PRESET_TARGETS",
    "get_preset", "resolve_reduction", "from_dict", "average_visual_tokens",
    # method zoo (docs/BASELINES.md §1-§7)
    "divprune_select", "divprune_budget", "dart_select", "dart_token_topk", "dart_kept_count",
    "pyset_order", "vispruner_select", "vispruner_counts", "vispruner_schedule",
    "cdpruner_select", "cdpruner_relevance", "vscan_stage1", "vscan_counts",
    "random_select", "pool_tokens", "pool_side", "pool_bins", "vscan_select", "SHALLOW_LAYER",
    "SelectConfig", "SELECT_METHODS", "at_least_float32", "METHOD_NEEDS", "DART_PIVOTS", "dart_topk",
    "ZOO_METHODS", "zoo_method",
]
