"""Typed reduction configs, budget accounting and the named presets (docs/ALGORITHM.md §4-5).

A :class:`ReductionConfig` is pure data (hashable, usable as a static jit
argument). Checks that need no model run at construction; checks that need
the patch count and LM depth run in :meth:`ReductionConfig.validate`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Optional, Union

from .baselines import (PDROP_DEFAULT_LAYERS, PDROP_DEFAULT_RATIOS, average_image_tokens,
                        stage_counts)
from .stage1 import MODES, vision_merge_size
from .zoo_config import DART_PIVOTS, SelectConfig, dart_keep, dart_topk

QUERY_SETS = ("all", "last", "salient")
POSITION_POLICIES = ("renumber", "keep")
STAGE2_METHODS = ("pdrop", "fastv", "dart")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not one of {tuple(allowed)}")


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    """Vision-side merge (docs/ALGORITHM.md §2). ``dominant`` includes CLS when ``cls_token``.

    ``cls_token=False`` is the Qwen2.5-VL convention (docs/ALGORITHM.md §2.6): no CLS,
    ``dominant`` counts tokens exactly and both counts are clipped per image.
    """

    dominant: int
    contextual: int
    width: int = 4
    mode: str = "duet"
    cls_token: bool = True

    def __post_init__(self):
        for name in ("dominant", "contextual", "width"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"stage1.{name} must be an int, got {getattr(self, name)!r}")
        _choice("stage1.mode", self.mode, MODES)
        if self.dominant < 1 or self.contextual < 0 or self.width < 1:
            raise ValueError(f"stage1 needs dominant >= 1, contextual >= 0, width >= 1; got "
                             f"{self.dominant}, {self.contextual}, {self.width}")
        if self.mode == "visionzip" and self.contextual == 0:
            raise ValueError("stage1 mode 'visionzip' needs contextual >= 1 (use mode 'duet')")
        if not self.cls_token and self.mode != "duet":
            raise ValueError("stage1.cls_token=False (Qwen2.5-VL) supports mode 'duet' only")

    def output_size(self, num_patches: int) -> int:
        """Static Stage-1 tokens per crop (K) for ``num_patches`` patch tokens."""
        if self.cls_token:
            return vision_merge_size(num_patches, self.dominant, self.contextual, self.width,
                                     self.mode)
        dominant = min(self.dominant, num_patches - 1)
        rest = num_patches - dominant
        return dominant + (min(self.contextual, rest) if self.contextual else 1)


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """LM-side rank-and-drop schedule (docs/ALGORITHM.md §3).

    ``layers`` = boundaries ``l_1 < .. < l_S`` (drop after ``l_s`` layers ran);
    ``ratios`` = ``r_1..r_S`` relative to ``n_0``; or ``keep`` = exact counts
    per boundary (then ``ratios`` must be empty; FastV presets use it).
    ``method='fastv'`` ranks with layer ``l_1 - 1``'s own attention on its input;
    ``method='dart'`` keeps ``keep`` image tokens chosen by DART from layer ``l_1 - 1``
    (docs/BASELINES.md §2, §9; ``keep`` = 4 + 8 x token_topk, positions kept).
    """

    layers: tuple
    ratios: tuple = ()
    queries: str = "all"
    positions: str = "renumber"
    method: str = "pdrop"
    keep: Optional[tuple] = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))
        _choice("stage2.queries", self.queries, QUERY_SETS)
        _choice("stage2.positions", self.positions, POSITION_POLICIES)
        _choice("stage2.method", self.method, STAGE2_METHODS)
        if not self.layers or not all(_is_int(l) for l in self.layers):
            raise ValueError(f"stage2.layers must be a non-empty list of ints, got {self.layers}")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"stage2.layers {list(self.layers)} must be strictly increasing")
        if self.layers[0] < 1:
            raise ValueError(f"stage2.layers {list(self.layers)}: every layer must be >= 1")
        if self.method in ("fastv", "dart") and len(self.layers) != 1:
            raise ValueError(f"{self.method} drops once; give one layer, got {list(self.layers)}")
        if self.method == "dart":
            if (self.keep is None) == (not self.ratios) or self.positions != "keep":
                raise ValueError("stage2.method 'dart' needs keep=[n] (68, 132, 196, ..) or "
                                 "ratios=[r] (a fraction of each image's tokens) and "
                                 "positions='keep' (DART keeps the original positions)")
            if self.keep is not None:
                dart_topk(self.keep[0], "stage2")
        if self.keep is None:
            self._check_schedule("ratios", self.ratios, lambda r: 0.0 <= r <= 1.0, "in [0, 1]")
        else:
            if self.ratios:
                raise ValueError("give stage2.ratios or stage2.keep, not both")
            self._check_schedule("keep", self.keep, lambda k: _is_int(k) and k >= 0,
                                 "ints >= 0")

    def _check_schedule(self, name, values, ok, what):
        if len(values) != len(self.layers):
            raise ValueError(f"stage2.{name} has {len(values)} entries for "
                             f"{len(self.layers)} layers; give one per layer")
        if not all(ok(v) for v in values):
            raise ValueError(f"stage2.{name} {list(values)} must be {what}")
        if any(b > a for a, b in zip(values, values[1:])):
            raise ValueError(f"stage2.{name} {list(values)} must be non-increasing")

    def image_counts(self, n0: int) -> list:
        """``[n_0, n_1, .., n_S]`` image tokens per segment (Python ints). DART with a
        ratio keeps ``dart_keep(round(r * n_0))``: the select presets' count, then DART's
        own rounding to ``4 + 8 x token_topk`` (docs/BASELINES.md §9)."""
        if self.keep is not None:
            return [int(n0), *self.keep]
        if self.method == "dart":
            return [int(n0), dart_keep(int(round(self.ratios[0] * n0)))]
        return stage_counts(n0, self.ratios)


@dataclasses.dataclass(frozen=True)
class ReductionConfig:
    """A named Stage-1 (or zoo ``select``) + Stage-2 combination; any part may be None.

    ``select`` is a zoo method at the LLM input (docs/BASELINES.md §9); it replaces Stage 1.
    """

    name: str
    stage1: Optional[Stage1Config] = None
    stage2: Optional[Stage2Config] = None
    select: Optional[SelectConfig] = None

    def __post_init__(self):
        if self.stage1 is not None and self.select is not None:
            raise ValueError(f"{self.name}: give stage1 or select, not both (both reduce the "
                             "image tokens entering the LM)")

    def image_tokens(self, num_patches: int, crops: int = 1) -> int:
        """``n_0``: image tokens entering the LM for ``crops`` crops/frames."""
        if self.select is not None:   # one selection over the whole block of crops
            return self.select.output_size(crops * num_patches)
        per_crop = self.stage1.output_size(num_patches) if self.stage1 else num_patches
        return crops * per_crop

    def image_counts(self, n0: int) -> list:
        """``[n_0, .., n_S]``; ``[n_0]`` without Stage 2."""
        return self.stage2.image_counts(n0) if self.stage2 else [int(n0)]

    def validate(self, num_patches: int, num_layers: int, *, crops: int = 1,
                 allow_clipping: bool = False, inputs=()) -> "ReductionConfig":
        """Raise ValueError if this config cannot run on the model; returns self.

        ``allow_clipping`` accepts Stage-1 counts beyond the patch count (they
        are clipped as in docs/ALGORITHM.md §2.6); Qwen-style configs always clip.
        ``inputs``: the optional model inputs the checkpoint offers (zoo_config.METHOD_NEEDS).
        """
        s1, s2 = self.stage1, self.stage2
        if self.select is not None:
            self.select.check(self.name, crops * num_patches, inputs)
        if s1 is not None and s1.cls_token:
            if s1.dominant > num_patches:
                raise ValueError(f"{self.name}: dominant={s1.dominant} exceeds the "
                                 f"{num_patches} patches; lower stage1.dominant")
            budget = num_patches if s1.mode == "paper" else num_patches + 1
            if not allow_clipping and s1.dominant + s1.contextual > budget:
                raise ValueError(
                    f"{self.name}: dominant + contextual = {s1.dominant + s1.contextual} "
                    f"exceeds the {budget} vision tokens; lower them or pass allow_clipping=True")
        if s2 is not None:
            bad = [l for l in s2.layers if not 1 <= l <= num_layers - 1]
            if bad:
                raise ValueError(f"{self.name}: stage2 layers {bad} outside [1, "
                                 f"{num_layers - 1}] for a {num_layers}-layer LM")
            n0 = self.image_tokens(num_patches, crops)
            if s2.keep is not None and s2.keep[0] > n0:
                raise ValueError(f"{self.name}: stage2.keep={s2.keep[0]} exceeds the {n0} "
                                 "image tokens entering the LM; lower stage2.keep")
            kept = self.image_counts(n0)[-1]
            if s2.method == "dart" and kept < dart_keep(sum(DART_PIVOTS)):   # (ratio: small image)
                raise ValueError(f"{self.name}: DART keeps {kept} of the {n0} image tokens entering"
                                 " the LM, below one pick per pivot; use a larger ratio or image")
        return self

    def to_dict(self) -> dict:
        """Plain mapping (lists, no tuples) that :func:`from_dict` reads back."""
        def plain(cfg):
            if cfg is None:
                return None
            return {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(cfg).items()}
        out = {"name": self.name, "stage1": plain(self.stage1), "stage2": plain(self.stage2)}
        if self.select is not None:
            out["select"] = plain(self.select)
        return out


def average_visual_tokens(config, num_patches: int, num_layers: int, crops: int = 1) -> float:
    """docs/ALGORITHM.md §4.1 average image tokens per LM layer (the paper's budget)."""
    config = resolve_reduction(config)
    if config is None:
        return float(crops * num_patches)
    n0 = config.image_tokens(num_patches, crops)
    layers = config.stage2.layers if config.stage2 else ()
    return average_image_tokens(config.image_counts(n0), layers, num_layers)


# --------------------------------------------------------------------------
# Building from YAML / user input.

def _unknown_keys(section: str, given: Mapping, cls) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in given:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid: {names}"
            raise ValueError(f"unknown {section} key {key!r}{hint}")


def _section(section: str, value, cls):
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{section} must be a mapping or null, got {type(value).__name__}")
    _unknown_keys(section, value, cls)
    return cls(**dict(value))


def from_dict(mapping: Mapping[str, Any]) -> ReductionConfig:
    """Build a config from ``{name, stage1: {...}|null, stage2: {...}|null}``.

    ``{preset: NAME, stage1: {...}, stage2: {...}}`` starts from a preset and
    overrides the given keys of each section (a null section removes it).
    """
    allowed = ("name", "preset", "stage1", "stage2", "select")
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=2)
            raise ValueError(f"unknown reduction key {key!r}"
                             + (f"; did you mean {', '.join(close)}?" if close
                                else f"; valid: {list(allowed)}"))
    base = get_preset(mapping["preset"]).to_dict() if "preset" in mapping else {}
    sections = {}
    for section in ("stage1", "stage2", "select"):
        value = mapping.get(section, base.get(section))
        if section in mapping and isinstance(value, Mapping) and base.get(section):
            value = {**base[section], **dict(value)}
        sections[section] = value
    name = str(mapping.get("name", mapping.get("preset", "custom")))
    try:
        return ReductionConfig(name, _section("stage1", sections["stage1"], Stage1Config),
                               _section("stage2", sections["stage2"], Stage2Config),
                               _section("select", sections["select"], SelectConfig))
    except ValueError as err:       # name the config a bad value came with
        raise ValueError(str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}") from None


def get_preset(name: str) -> ReductionConfig:
    """Preset by name; an unknown name lists the closest ones."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(str(name), PRESETS, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(PRESETS)}"
    raise ValueError(f"unknown reduction preset {name!r}; {hint}")


def resolve_reduction(x: Union[None, str, Mapping, ReductionConfig]) -> Optional[ReductionConfig]:
    """None/'none' -> None (no reduction); a preset name, a mapping or a config -> config."""
    if x is None or (isinstance(x, str) and x.lower() in ("", "none")):
        return None
    if isinstance(x, ReductionConfig):
        return x
    if isinstance(x, str):
        return get_preset(x)
    if isinstance(x, Mapping):
        return from_dict(x)
    raise TypeError(f"reduction must be None, a preset name, a mapping or a ReductionConfig, "
                    f"got {type(x).__name__}")


# --------------------------------------------------------------------------
# Presets (docs/ALGORITHM.md §4.2, §5). PRESET_TARGETS documents what each budget was derived
# for: (target average tokens, patches per crop, LM layers, crops).

DUET_STAGE2 = Stage2Config(layers=(16, 24), ratios=(0.5, 0.0))
QWEN_STAGE2 = Stage2Config(layers=(14, 21), ratios=(0.5, 0.25), positions="keep")
# PyramidDrop never published 192/128/64 schedules (the paper copies its numbers).
# Ours: FastV's early drop at layer 2, then PyramidDrop's 8-layer segmentation;
# ratios lambda^s with lambda on a 0.01 grid closest to the budget (docs/ALGORITHM.md §4.1):
# 0.58 -> 191.125, 0.44 -> 128.6875, 0.20 -> 64.3125 with n_0 = 576, L = 32.
PDROP_BUDGET_LAYERS = (2, 8, 16, 24)
PDROP_BUDGET_RATIOS = {192: (0.58, 0.3364, 0.195112, 0.113165),
                       128: (0.44, 0.1936, 0.085184, 0.037481),
                       64: (0.2, 0.04, 0.008, 0.0016)}
FASTV_KEEP = {192: 166, 128: 98, 64: 30}
LLAVA15_DUET = {192: (300, 7), 128: (170, 35), 64: (72, 30)}
LLAVA15_VISIONZIP = {192: (162, 30), 128: (108, 20), 64: (54, 10)}   # VisionZip README
LLAVANEXT_DUET = {640: (170, 35), 320: (72, 30), 160: (45, 6)}       # per crop, 5 crops
VIDEOLLAVA_DUET = {960: (160, 32), 136: (20, 7)}                     # per frame, 8 frames
# LLaVA-OneVision-7B (28 LM layers, 729 SigLIP patches per crop): NeXT's per-crop d, c
# scaled by 729/576, named by the 2x2-grid (5 crops) average (docs/ALGORITHM.md §2.9, §4.2)
LLAVAOV_DUET = {810: (215, 44), 403: (91, 38), 203: (57, 8)}
LLAVAOV_STAGE2 = Stage2Config(layers=(14, 21), ratios=(0.5, 0.0))
QWEN_DUET = {"640": (870, 153), "320": (517, 91), "160": (207, 36), "640-scripts": (540, 100)}
# The zoo (docs/BASELINES.md §6, §9). Kept at the LM input: the budget, except pool
# (floor(sqrt(k))^2 = 64/121/169). DART keeps 4 + 8 * (budget // 8) = 68/132/196 from
# layer 2 on (per-layer average 99.75/159.75/219.75); VScan T -> layer-16 keep is 3:1.
ZOO_SELECT = ("divprune", "vispruner", "cdpruner", "random", "pool")
VSCAN_BUDGETS = {192: (288, 96), 128: (192, 64), 64: (96, 32)}
DART_LAYER = 2
# DART on LLaVA-NeXT / OneVision (docs/BASELINES.md §9): the same layer and pivots over the
# whole image block, keep 4 + 8 * (budget // 8) at the family's duet budgets (the DART
# paper keeps 320 of NeXT's 2880, 11.1%); a 2x2 grid (5 crops) for the accounting.
NEXT_DART, OV_DART = (640, 320, 160), (810, 403, 203)
BLOCK_SELECT = ("divprune", "random")   # over the whole image block, at the same budgets
# Qwen2.5-VL: LLaVA-1.5's 192 / 128 / 64 of 576 of each image's tokens (docs/BASELINES.md §9)
QWEN_ZOO = {"33pct": 192 / 576, "22pct": 128 / 576, "11pct": 64 / 576}


def dart_stage2(budget: Optional[int] = None, ratio: Optional[float] = None) -> Stage2Config:
    """DART from layer 2, positions kept: keeps `dart_keep(budget)`, or a `ratio` of each image."""
    return Stage2Config((DART_LAYER,), (ratio,) if ratio else (), positions="keep", method="dart",
                        keep=None if ratio else (dart_keep(budget),))


def _build_presets():
    presets, targets = {}, {}

    def add(name, stage1, stage2, target=None, patches=576, layers=32, crops=1, select=None):
        presets[name] = ReductionConfig(name, stage1, stage2, select)
        if target is not None:
            targets[name] = (target, patches, layers, crops)

    for budget, (d, c) in LLAVA15_DUET.items():
        add(f"llava15-duet-{budget}", Stage1Config(d, c), DUET_STAGE2, budget)
        for queries in ("last", "salient"):
            add(f"llava15-duet-{budget}-{queries}", Stage1Config(d, c),
                dataclasses.replace(DUET_STAGE2, queries=queries), budget)
    for budget, (d, c) in LLAVA15_VISIONZIP.items():
        add(f"llava15-visionzip-{budget}", Stage1Config(d, c, mode="visionzip"), None, budget)
    add("llava15-pdrop-270", None,
        Stage2Config(PDROP_DEFAULT_LAYERS, PDROP_DEFAULT_RATIOS, queries="last"), 270)
    for budget, ratios in PDROP_BUDGET_RATIOS.items():
        add(f"llava15-pdrop-{budget}", None,
            Stage2Config(PDROP_BUDGET_LAYERS, ratios, queries="last"), budget)
    for budget, keep in FASTV_KEEP.items():
        add(f"llava15-fastv-{budget}", None,
            Stage2Config((2,), (), queries="last", positions="keep", method="fastv",
                         keep=(keep,)), budget)
    for budget, (d, c) in LLAVANEXT_DUET.items():
        add(f"llavanext-duet-{budget}", Stage1Config(d, c), DUET_STAGE2, budget, crops=5)
    for budget, (d, c) in VIDEOLLAVA_DUET.items():
        add(f"videollava-duet-{budget}", Stage1Config(d, c), DUET_STAGE2, budget,
            patches=256, crops=8)
    for budget, (d, c) in LLAVAOV_DUET.items():
        add(f"llavaov-duet-{budget}", Stage1Config(d, c, cls_token=False), LLAVAOV_STAGE2, budget,
            patches=729, layers=28, crops=5)
    for suffix, (d, c) in QWEN_DUET.items():   # image-dependent budget: no target
        add(f"qwen25vl-duet-{suffix}", Stage1Config(d, c, cls_token=False), QWEN_STAGE2)
    for budget, (t, keep) in VSCAN_BUDGETS.items():
        for method in ZOO_SELECT:
            # cdpruner validates only with a CLIP text tower, so it has no checked target
            exact = (SelectConfig(method, budget).output_size(576) == budget
                     and method != "cdpruner")
            add(f"llava15-{method}-{budget}", None, None, budget if exact else None,
                select=SelectConfig(method, budget))
        add(f"llava15-dart-{budget}", None, dart_stage2(budget))
        add(f"llava15-vscan-{budget}", None,
            Stage2Config((16,), (), queries="last", keep=(keep,)), budget,
            select=SelectConfig("vscan", t))
    blocks = [   # DivPrune, random and DART over whole image blocks (Qwen: ratios)
              *((f"llavanext-{{}}-{b}", {"budget": b}, (b, 576, 32, 5)) for b in NEXT_DART),
              *((f"llavaov-{{}}-{b}", {"budget": b}, (b, 729, 28, 5)) for b in OV_DART),
              *((f"qwen25vl-{{}}-{s}", {"ratio": r}, ()) for s, r in QWEN_ZOO.items())]
    for name, size, target in blocks:
        for method in BLOCK_SELECT:
            add(name.format(method), None, None, *target, select=SelectConfig(method, **size))
        add(name.format("dart"), None, dart_stage2(**size))
    return presets, targets


PRESETS, PRESET_TARGETS = _build_presets()
