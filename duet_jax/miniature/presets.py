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

The zoo (docs/BASELINES.md §9) is derived from the `llava15-{method}-{budget}`
presets the same way: every LM-input selection (DivPrune, VisPruner, VScan's
stage 1, random, pool) keeps its count, since the patches are CLIP's 576; the
in-LM layers scale with `scale_layers` (DART's layer 2 of 32 becomes 1 of 4,
VScan's layer 16 becomes 2), and VScan's shallow probe layer 5 of CLIP-L's 24
becomes round(5 V / 24) of the tower's V layers (1 of the miniature's 4). The
miniature's averages (average_visual_tokens, 576 patches, 4 LM layers), rows
named by the budget of the preset they come from:

    DivPrune, VisPruner, random, VScan   192 / 128 / 64 (VScan 288 -> 96 kept
                                         from layer 2 of 4, as 16 of 32)
    pool                                 169 / 121 / 64 (13^2, 11^2, 8^2 cells)
    DART                                 291 / 243 / 195

DART keeps 196 / 132 / 68 tokens after layer 1, but the first layer holds all
576 (as PDrop's), so on 4 layers its average is (576 + 3 keep) / 4; on 32 it
is 219.75 / 159.75 / 99.75. Its rows keep the real preset's counts and show
the average they reach. CDPruner is left out: it ranks the patches by the
question's CLIP text embedding, and the miniature has no CLIP text tower.
`make demo`'s table holds the zoo at 64 tokens only (ZOO_BUDGETS: time);
`inference_presets(..., zoo_budgets=BUDGETS)` gives all three.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from duet_jax.reduction import (SHALLOW_LAYER, ReductionConfig, Stage2Config,
                                average_visual_tokens, get_preset)
from duet_jax.reduction.presets import PDROP_BUDGET_LAYERS

BUDGETS = (192, 128, 64)
PAPER_LAYERS = 32
CLIP_LAYERS = 24            # CLIP ViT-L/14-336's depth, where VScan reads layer 5
PATCHES = 576
# table label -> the llava15 preset family it is derived from (CDPruner: no CLIP text tower)
ZOO = {"DivPrune": "divprune", "DART": "dart", "VisPruner": "vispruner", "VScan": "vscan",
       "random": "random", "pool": "pool"}
# `make demo` must stay under 12 minutes on 2 idle cores: a zoo row costs about what a
# DUET row does (evaluation + prefill timing, measured side by side), and 18 more rows
# would about double the evaluation, so the table shows the zoo at 64 tokens only.
ZOO_BUDGETS = (64,)
LEFT_OUT = ("CDPruner is not in the table: it ranks the patches by the question's CLIP text "
            "embedding, and the miniature has no CLIP text tower")


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


def shallow_vision_layer(vision_layers: int) -> int:
    """VScan's shallow layer 5 of 24 at the same fraction of a V-layer tower, kept below
    the deep layer V - 2 it must precede (5 for CLIP-L, 1 for the miniature's 4)."""
    if vision_layers < 3:
        raise ValueError(f"VScan reads a shallow layer below the tower's second to last; a "
                         f"{vision_layers}-layer tower has none")
    return min(round(SHALLOW_LAYER * vision_layers / CLIP_LAYERS), vision_layers - 3)


def zoo(method: str, budget: int, num_layers: int, vision_layers: int) -> ReductionConfig:
    """The `llava15-{method}-{budget}` zoo preset on an L-layer LM and a V-layer tower:
    selection counts unchanged, LM boundaries scaled (`scale_layers`), VScan's shallow
    probe layer scaled (`shallow_vision_layer`)."""
    real = get_preset(f"llava15-{method}-{budget}")
    stage2 = real.stage2 and dataclasses.replace(
        real.stage2, layers=scale_layers(real.stage2.layers, num_layers))
    select = real.select
    if select is not None and select.method == "vscan":
        select = dataclasses.replace(select, shallow_layer=shallow_vision_layer(vision_layers))
    return ReductionConfig(f"mini-{method}-{budget}", real.stage1, stage2, select)


METHODS = ("PyramidDrop", "VisionZip", "DUET (vanilla)", "DUET (C)", "DUET", *ZOO)


def inference_presets(num_layers: int, vision_layers: int, methods=METHODS, budgets=BUDGETS,
                      zoo_budgets=ZOO_BUDGETS
                      ) -> Dict[str, List[Tuple[int, Optional[ReductionConfig]]]]:
    """{method: [(budget, config or None when unreachable)]} for the inference-only table
    of a model with `num_layers` LM and `vision_layers` tower layers; the zoo methods run
    at the `budgets` that are also `zoo_budgets`."""
    make = {"VisionZip": lambda b: visionzip(b), "PyramidDrop": lambda b: pdrop(b, num_layers),
            "DUET (vanilla)": lambda b: duet(b, num_layers, "vanilla"),
            "DUET (C)": lambda b: duet(b, num_layers, "C"), "DUET": lambda b: duet(b, num_layers)}
    for label, method in ZOO.items():
        make[label] = lambda b, m=method: zoo(m, b, num_layers, vision_layers)
    unknown = [m for m in methods if m not in make]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; use some of {METHODS}")
    return {m: [(b, make[m](b)) for b in budgets if m not in ZOO or b in zoo_budgets]
            for m in methods}


def table_notes(table: Dict[str, list], num_layers: int) -> List[str]:
    """The inference table's footnotes on the zoo rows it holds."""
    if not any(m in ZOO for m in table):
        return []
    notes = [LEFT_OUT]
    if "DART" in table:
        keep = " / ".join(str(cfg.stage2.keep[0]) for _, cfg in table["DART"])
        notes.append(f"DART keeps the LLaVA-1.5 preset's {keep} tokens after the first of "
                     f"the {num_layers} LM layers, which holds all 576: hence its tokens above "
                     "its budget")
    return notes


def describe(cfg: Optional[ReductionConfig], num_layers: int) -> str:
    """One line: what a config does and its docs/ALGORITHM.md §4.1 average."""
    if cfg is None:
        return "unreachable"
    parts = []
    if cfg.stage1 is not None:
        s1 = cfg.stage1
        parts.append(f"stage1 {s1.mode} d={s1.dominant} c={s1.contextual} w={s1.width}")
    if cfg.select is not None:
        sel = cfg.select
        parts.append(f"select {sel.method} k={sel.count(PATCHES)} -> "
                     f"{sel.output_size(PATCHES)} tokens"
                     + (f" shallow_layer={sel.shallow_layer}" if sel.method == "vscan" else ""))
    if cfg.stage2 is not None:
        s2 = cfg.stage2
        schedule = (f"keep={list(s2.keep)}" if s2.keep is not None
                    else f"ratios={[round(r, 4) for r in s2.ratios]}")
        parts.append(f"stage2 {s2.method} layers={list(s2.layers)} {schedule} "
                     f"queries={s2.queries}")
    avg = average_visual_tokens(cfg, PATCHES, num_layers)
    return f"{cfg.name}: {'; '.join(parts)}; avg {avg:.2f} tokens/layer"
