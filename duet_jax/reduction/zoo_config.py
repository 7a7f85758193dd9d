"""The ``select`` section of a ReductionConfig: one zoo method at the LLM input (docs/BASELINES.md §9).

DivPrune, VisPruner, CDPruner, VScan stage 1 and the random / pool controls
replace the image rows entering the LM by a static-size subset (or merge /
pool) of them. DART acts inside the LM and is a Stage-2 method instead
(``Stage2Config(method="dart")``); VScan's second stage is an ordinary Stage 2
with ``queries="last"``. This module holds only pure data and the static
size arithmetic; the wiring lives in ``duet_jax.models.zoo``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from .controls import pool_side
from .dart import dart_kept_count
from .vispruner import vispruner_schedule
from .vscan import SHALLOW_LAYER, vscan_counts

SELECT_METHODS = ("divprune", "vispruner", "cdpruner", "vscan", "random", "pool")
ZOO_METHODS = ("dart", *SELECT_METHODS)   # what a handle's `zoo_methods` names


def zoo_method(red) -> Optional[str]:
    """The zoo method a ReductionConfig runs (its select method, or "dart"), else None."""
    if red.select is not None:
        return red.select.method
    return "dart" if red.stage2 is not None and red.stage2.method == "dart" else None

# model inputs a method reads beyond the LLaVA checkpoint's own modules
METHOD_NEEDS = {"cdpruner": ("clip_text_tower",)}
INPUT_HINTS = {"clip_text_tower": "the CLIP text tower and visual projection (text_embeds of the "
                                  "question, image_embeds of the patches)"}
INPUT_FIXES = {"clip_text_tower": "use --clip-text-tower DIR (load_llava(..., clip_text_tower=DIR))"
                                  " with an HF CLIPModel dir such as "
                                  "openai/clip-vit-large-patch14-336, or another preset"}
DART_PIVOTS = (4, 4)   # (p_img, p_txt): the official defaults (docs/BASELINES.md §2)


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """A zoo method at the LLM input (docs/BASELINES.md §9).

    ``budget``: tokens to keep (DivPrune ``k``, VisPruner / CDPruner / VScan ``T``,
    random ``k``, pool ``k`` -> ``floor(sqrt(k))^2`` cells), or ``ratio`` of the
    patches (``int(round(ratio * N))``, DivPrune's ``SUBSET_RATIO``); give one.
    ``important_ratio``: VisPruner's share of important tokens. ``seed``: random's key.
    ``shallow_layer``: the CLIP layer whose CLS attention drives VScan's local scan
    (VScan's 5 of CLIP-L's 24; a shallower tower needs a lower one, docs/BASELINES.md §9).
    """

    method: str
    budget: Optional[int] = None
    ratio: Optional[float] = None
    important_ratio: float = 0.5
    seed: int = 0
    shallow_layer: int = SHALLOW_LAYER

    def __post_init__(self):
        if self.method not in SELECT_METHODS:
            raise ValueError(f"select.method={self.method!r} is not one of {SELECT_METHODS}")
        if (self.budget is None) == (self.ratio is None):
            raise ValueError(f"select needs exactly one of budget and ratio (got budget="
                             f"{self.budget!r}, ratio={self.ratio!r}); give one")
        if self.budget is not None and (isinstance(self.budget, bool)
                                        or not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"select.budget={self.budget!r} must be an int >= 1")
        if self.ratio is not None and not 0.0 < float(self.ratio) <= 1.0:
            raise ValueError(f"select.ratio={self.ratio!r} is outside (0, 1]; give a fraction "
                             "of the patches such as 0.098")
        if not 0.0 < float(self.important_ratio) <= 1.0:
            raise ValueError(f"select.important_ratio={self.important_ratio!r} is outside (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"select.seed={self.seed!r} must be an int")
        if (isinstance(self.shallow_layer, bool) or not isinstance(self.shallow_layer, int)
                or self.shallow_layer < 0):
            raise ValueError(f"select.shallow_layer={self.shallow_layer!r} is not a CLIP layer "
                             "index; give an int >= 0 (VScan's is 5)")

    def count(self, num_patches: int) -> int:
        """The method's budget knob for ``num_patches`` patches (a Python int)."""
        return self.budget if self.budget is not None else int(round(self.ratio * num_patches))

    def output_size(self, num_patches: int) -> int:
        """Image tokens entering the LM: pool keeps ``side^2``, VScan ``16 k_w + n_glob``."""
        k = self.count(num_patches)
        if self.method == "pool":
            return pool_side(k) ** 2
        if self.method == "vscan":
            return vscan_counts(k, num_patches)["kept"]
        return k

    def check(self, name: str, num_patches: int, inputs=()) -> None:
        """ValueError naming preset ``name`` and the fix, before anything compiles."""
        k = self.count(num_patches)
        key = "select.budget" if self.budget is not None else f"select.ratio={self.ratio}"
        if not 1 <= k <= num_patches:
            raise ValueError(f"{name}: {self.method} keeps {k} tokens ({key}) but the image "
                             f"block has {num_patches}; give a budget in [1, {num_patches}]")
        missing = [need for need in METHOD_NEEDS.get(self.method, ()) if need not in inputs]
        if missing:
            raise ValueError(f"{name}: {self.method} needs {INPUT_HINTS[missing[0]]}, which "
                             f"this checkpoint lacks ({missing[0]}); {INPUT_FIXES[missing[0]]}")
        side = math.isqrt(num_patches)
        if self.method in ("pool", "vscan") and side * side != num_patches:
            raise ValueError(f"{name}: {self.method} needs a square patch grid, not "
                             f"{num_patches} patches; use another method")
        try:
            if self.method == "vispruner":
                vispruner_schedule(num_patches, k, self.important_ratio)
            if self.method == "vscan":
                vscan_counts(k, num_patches)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None


def dart_keep(budget: int) -> int:
    """DART's kept image tokens for a budget of ``budget``: ``p_img + P * (budget // P)``
    (its ``token_topk = floor(B / P)``; 64 -> 68, 192 -> 196)."""
    p_img, p_txt = DART_PIVOTS
    return dart_kept_count(p_img, p_txt, budget // (p_img + p_txt))


def dart_topk(keep: int, name: str = "dart") -> int:
    """DART picks per pivot from its kept count ``p_img + P * token_topk``;
    ValueError where ``keep`` is not of that form (68, 132, 196 are)."""
    p_img, p_txt = DART_PIVOTS
    topk, rest = divmod(keep - p_img, p_img + p_txt)
    if keep < p_img or rest or dart_kept_count(p_img, p_txt, topk) != keep:
        raise ValueError(f"{name}: DART keeps {p_img} + {p_img + p_txt} x token_topk image tokens; "
                         f"stage2.keep={keep} is not of that form (e.g. 68, 132, 196)")
    return topk
