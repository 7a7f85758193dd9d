"""Qwen2.5-VL presets: average-token accounting (docs/ALGORITHM.md §4.1-4.2) on the formula and
on what the reduced model really feeds each LM layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duet_jax.models.qwen25vl import Qwen25VLModel, rope_index
from duet_jax.models.qwen25vl_reduced import reduced_forward
from duet_jax.reduction import average_visual_tokens, get_preset
from duet_jax.reduction.stage1_nocls import in_place_size
from tests.helpers.tiny_qwen import IMAGE, jax_params, qwen_inputs, tiny_qwen

PRESETS = {"640": (870, 153, 1023), "320": (517, 91, 608), "160": (207, 36, 243)}


def _formula(n: int) -> float:
    """docs/ALGORITHM.md §4.2 note: the per-image Qwen average for n image tokens
    entering the LM."""
    return (14 * n + 7 * int(n / 2) + 7 * int(n / 4)) / 28


@pytest.mark.parametrize("suffix", sorted(PRESETS))
@pytest.mark.parametrize("tokens", [1, 2, 30, 243, 600, 1023, 1024, 2500, 16384])
def test_preset_accounting_matches_the_per_image_formula(suffix, tokens):
    d, c, cap = PRESETS[suffix]
    preset = get_preset(f"qwen25vl-duet-{suffix}")
    assert (preset.stage1.dominant, preset.stage1.contextual, preset.stage1.width) == (d, c, 4)
    assert preset.stage2.layers == (14, 21) and preset.stage2.ratios == (0.5, 0.25)
    if tokens < 2:
        with pytest.raises(ValueError, match="cannot be reduced"):
            in_place_size(tokens, d, c)
        return
    n0 = in_place_size(tokens, d, c)
    assert n0 == preset.stage1.output_size(tokens) == min(cap, tokens)
    assert average_visual_tokens(preset, tokens, 28) == _formula(n0)


def test_budget_cap_is_the_table_n0():
    # large images: n_0 = d + c exactly (Table 15: 1023 / 608 / 243)
    for suffix, (d, c, cap) in PRESETS.items():
        assert in_place_size(10_000, d, c) == d + c == cap


@pytest.mark.parametrize("suffix", ["640", "160"])
def test_model_feeds_each_layer_the_accounted_tokens(suffix):
    """28-layer tiny LM with the real preset: image rows per layer == the average of
    docs/ALGORITHM.md §4.1."""
    hf = tiny_qwen(text_layers=28, vision_depth=2)
    cfg, params = jax_params(hf)
    preset = get_preset(f"qwen25vl-duet-{suffix}")
    ids, pixels, grid = qwen_inputs(((150, 200),), text=(4, 6), seed=1)
    t = int((ids == IMAGE).sum())
    pos, _ = rope_index(cfg, ids, grid)
    fwd = jax.jit(reduced_forward, static_argnames=("model", "grids", "reduction"))(
        Qwen25VLModel(cfg), jax.tree.map(jnp.asarray, params), jnp.asarray(ids),
        jnp.asarray(pixels), tuple(map(tuple, grid.tolist())), jnp.asarray(pos), None, preset)
    text_rows = ids.shape[1] - t
    per_layer = [(int(np.asarray(s.valid).sum()) - text_rows) * (s.hi - s.lo) for s in fwd.segments]
    n0 = preset.stage1.output_size(t)
    assert [s.hi - s.lo for s in fwd.segments] == [14, 7, 7]
    assert sum(per_layer) / 28 == _formula(n0) == average_visual_tokens(preset, t, 28)
