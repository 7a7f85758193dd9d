"""Reduction presets for the miniature LLaVA, derived from the LLaVA-1.5 ones
(docs/ALGORITHM.md §4-5).

The miniature tower has 24 x 24 = 576 patches like CLIP ViT-L/14-336, so every
Stage-1 setting is the real preset's, unchanged: DUET `d, c, w` = 300/7/4,
170/35/4, 72/30/4 and VisionZip's `d + c` = 162+30, 108+20, 54+10. Only the
LM depth differs (L layers instead of 32): Stage-2 boundaries keep their
*fraction* of the depth, so DUET's [16, 24] of 32 becomes [L/2, 3L/4], and the
docs/ALGORITHM.md §4.1 averages are exactly the paper's (191.75 / 128 / 63.75).

PyramidDrop has no published 192/128/64 schedule (the paper copies PDrop's
own numbers); the project's LLaVA-1.5 presets drop at [2, 8, 16, 24] with
ratios lambda^s. On L layers the boundaries become the distinct non-zero
values of round(l * L / 32) (at least layer 1) and lambda is re-fitted on a
0.01 grid to the budget. The first layer always holds all 576 tokens, so a
budget below 576 / L cannot be reached by any drop-between-layers schedule:
such a PDrop row is reported as unreachable instead of silently changed.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from duet_jax.reduction import (ReductionConfig, Stage2Config, average_visual_tokens, get_preset)
from duet_jax.reduction.presets import PDROP_BUDGET_LAYERS

BUDGETS = (192, 128, 64)
PAPER_LAYERS = 32
PATCHES = 576


def scale_layers(layers, num_layers: int) -> Tuple[int, ...]:
    """Boundaries at the same fraction of depth: round(l * L / 32), >= 1, distinct, < L."""
    if num_layers % 4:
        raise ValueError(f"the miniature LM needs a multiple of 4 layers so that DUET's "
                         f"[16, 24] of 32 scale to whole layers; got {num_layers}")
    out: List[int] = []
    for layer in layers:
        scaled = min(max(1, round(layer * num_layers / PAPER_LAYERS)), num_layers - 1)
        if not out or scaled > out[-1]:
            out.append(scaled)
    return tuple(out)


def duet(budget: int, num_layers: int, variant: str = "") -> ReductionConfig:
    """LLaVA-1.5 DUET preset (Stage 1 counts unchanged, Stage-2 boundaries scaled).

    variant: "" is the official code's default (local clustering, all text tokens
    rank the drops: the paper's C+all); "vanilla" and "C" are the paper's variants
    (VisionZip clustering resp. local clustering, the last text token ranks), with
    the same token counts (docs/ALGORITHM.md §1).
    """
    real = get_preset(f"llava15-duet-{budget}")
    mode, queries = {"": ("duet", real.stage2.queries), "vanilla": ("visionzip", "last"),
                     "C": ("duet", "last")}[variant]
    stage2 = dataclasses.replace(real.stage2, layers=scale_layers(real.stage2.layers, num_layers),
                                 queries=queries)
    name = f"mini-duet-{variant.lower()}-{budget}" if variant else f"mini-duet-{budget}"
    return ReductionConfig(name, dataclasses.replace(real.stage1, mode=mode), stage2)


def visionzip(budget: int) -> ReductionConfig:
    """VisionZip touches only the tower: the LLaVA-1.5 preset as it is."""
    return dataclasses.replace(get_preset(f"llava15-visionzip-{budget}"),
                               name=f"mini-visionzip-{budget}")


def pdrop(budget: int, num_layers: int) -> Optional[ReductionConfig]:
    """PyramidDrop with boundaries scaled from [2, 8, 16, 24] and lambda fitted to `budget`
    (closest average on a 0.01 grid); None when the budget is below 576 / L."""
    layers = scale_layers(PDROP_BUDGET_LAYERS, num_layers)
    best = None
    for step in range(1, 100):
        lam = step / 100.0
        ratios = tuple(round(lam ** (s + 1), 6) for s in range(len(layers)))
        cfg = ReductionConfig(f"mini-pdrop-{budget}", None,
                              Stage2Config(layers, ratios, queries="last"))
        gap = abs(average_visual_tokens(cfg, PATCHES, num_layers) - budget)
        if best is None or gap < best[0]:
            best = (gap, cfg)
    # A fit more than 10 % off the budget is not that budget.
    return best[1] if best[0] <= 0.1 * budget else None


METHODS = ("PyramidDrop", "VisionZip", "DUET (vanilla)", "DUET (C)", "DUET")


def inference_presets(num_layers: int, methods=METHODS, budgets=BUDGETS
                      ) -> Dict[str, List[Tuple[int, Optional[ReductionConfig]]]]:
    """{method: [(budget, config or None when unreachable)]} for the inference-only table."""
    make = {"VisionZip": lambda b: visionzip(b), "PyramidDrop": lambda b: pdrop(b, num_layers),
            "DUET (vanilla)": lambda b: duet(b, num_layers, "vanilla"),
            "DUET (C)": lambda b: duet(b, num_layers, "C"), "DUET": lambda b: duet(b, num_layers)}
    unknown = [m for m in methods if m not in make]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; use some of {METHODS}")
    return {m: [(b, make[m](b)) for b in budgets] for m in methods}


def describe(cfg: Optional[ReductionConfig], num_layers: int) -> str:
    """One line: what a config does and its docs/ALGORITHM.md §4.1 average."""
    if cfg is None:
        return "unreachable"
    parts = []
    if cfg.stage1 is not None:
        s1 = cfg.stage1
        parts.append(f"stage1 {s1.mode} d={s1.dominant} c={s1.contextual} w={s1.width}")
    if cfg.stage2 is not None:
        s2 = cfg.stage2
        parts.append(f"stage2 layers={list(s2.layers)} ratios={[round(r, 4) for r in s2.ratios]} "
                     f"queries={s2.queries}")
    avg = average_visual_tokens(cfg, PATCHES, num_layers)
    return f"{cfg.name}: {'; '.join(parts)}; avg {avg:.2f} tokens/layer"
