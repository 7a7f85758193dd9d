"""Miniature presets keep the LLaVA-1.5 budgets (docs/ALGORITHM.md §4.1) on a shallower LM."""
from __future__ import annotations

import dataclasses

import pytest

from duet_jax.miniature import presets
from duet_jax.reduction import average_visual_tokens, get_preset

PAPER_AVG = {192: 191.75, 128: 128.0, 64: 63.75}


@pytest.mark.parametrize("layers", [4, 8, 32])
@pytest.mark.parametrize("budget", presets.BUDGETS)
def test_duet_keeps_the_paper_average(layers, budget):
    cfg = presets.duet(budget, layers)
    assert average_visual_tokens(cfg, 576, layers) == PAPER_AVG[budget]
    real = get_preset(f"llava15-duet-{budget}")
    assert cfg.stage1 == real.stage1 and cfg.stage2.ratios == real.stage2.ratios
    assert cfg.stage2.layers == (layers // 2, 3 * layers // 4)
    cfg.validate(576, layers)


def test_duet_on_32_layers_is_the_real_preset():
    for budget in presets.BUDGETS:
        mini, real = presets.duet(budget, 32), get_preset(f"llava15-duet-{budget}")
        assert (mini.stage1, mini.stage2) == (real.stage1, real.stage2)


@pytest.mark.parametrize("budget", presets.BUDGETS)
def test_paper_variants_differ_from_the_default_only_where_the_paper_says(budget):
    """vanilla = VisionZip clustering + last-token drops; C = local clustering +
    last-token drops (docs/ALGORITHM.md §1); same token counts as the default."""
    default = presets.duet(budget, 4)
    for variant, mode in (("vanilla", "visionzip"), ("C", "duet")):
        cfg = presets.duet(budget, 4, variant)
        assert cfg.stage1.mode == mode and cfg.stage2.queries == "last"
        assert dataclasses.replace(cfg.stage1, mode="duet") == default.stage1
        assert dataclasses.replace(cfg.stage2, queries=default.stage2.queries) == default.stage2
        assert average_visual_tokens(cfg, 576, 4) == PAPER_AVG[budget]
    names = {presets.duet(budget, 4, v).name for v in ("", "vanilla", "C")}
    assert len(names) == 3


@pytest.mark.parametrize("budget", presets.BUDGETS)
def test_visionzip_is_the_llava15_preset(budget):
    cfg = presets.visionzip(budget)
    assert cfg.stage1 == get_preset(f"llava15-visionzip-{budget}").stage1 and cfg.stage2 is None
    assert average_visual_tokens(cfg, 576, 4) == budget


def test_pdrop_reaches_a_budget_exactly_when_the_first_layer_allows_it():
    for layers in (4, 8, 32):
        for budget in presets.BUDGETS:
            cfg = presets.pdrop(budget, layers)
            reachable = 576 / layers < budget
            assert (cfg is not None) == reachable, (layers, budget)
            if cfg is not None:
                assert abs(average_visual_tokens(cfg, 576, layers) - budget) <= 0.1 * budget
                assert cfg.stage1 is None and cfg.stage2.queries == "last"
                cfg.validate(576, layers)
    # On 32 layers the scaled boundaries are the project's own PDrop boundaries.
    assert presets.pdrop(192, 32).stage2.layers == (2, 8, 16, 24)


def test_scale_layers_needs_whole_layers():
    assert presets.scale_layers((16, 24), 4) == (2, 3)
    assert presets.scale_layers((2, 8, 16, 24), 4) == (1, 2, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        presets.scale_layers((16, 24), 6)
