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


# The zoo on the miniature (4 LM layers, a 4-layer tower): the averages written out by
# hand from docs/BASELINES.md §6-7 and §9 (pool keeps floor(sqrt(k))^2 cells; VScan keeps
# T then its layer-16 count from layer 2 of 4; DART keeps 4 + 8 (k // 8) after layer 1
# of 4, the first layer holding all 576).
MINI_AVG = {"divprune": {192: 192, 128: 128, 64: 64}, "vispruner": {192: 192, 128: 128, 64: 64},
            "random": {192: 192, 128: 128, 64: 64}, "pool": {192: 169, 128: 121, 64: 64},
            "vscan": {192: (288 * 2 + 96 * 2) / 4, 128: (192 * 2 + 64 * 2) / 4,
                      64: (96 * 2 + 32 * 2) / 4},
            "dart": {192: (576 + 3 * 196) / 4, 128: (576 + 3 * 132) / 4,
                     64: (576 + 3 * 68) / 4}}


@pytest.mark.parametrize("method", sorted(MINI_AVG))
def test_zoo_token_accounting_on_the_miniature_depth(method):
    assert set(presets.ZOO.values()) == set(MINI_AVG)       # CDPruner: no CLIP text tower
    for budget in presets.BUDGETS:
        cfg = presets.zoo(method, budget, 4, 4)
        assert average_visual_tokens(cfg, 576, 4) == MINI_AVG[method][budget]
        cfg.validate(576, 4)
        real = get_preset(f"llava15-{method}-{budget}")
        if real.stage2 is not None:     # DART's 2 and VScan's 16 of 32 -> 1 and 2 of 4
            assert cfg.stage2.layers == ({"dart": 1, "vscan": 2}[method],)
            assert cfg.stage2.keep == real.stage2.keep
        if method == "vscan":
            assert cfg.select.shallow_layer == 1 < 4 - 2     # below the tower's deep layer
        else:
            assert cfg.select == real.select
        # At LLaVA-1.5's depths the derived preset is the real one.
        full = presets.zoo(method, budget, 32, 24)
        assert (full.stage1, full.stage2, full.select) == (real.stage1, real.stage2, real.select)


def test_every_zoo_row_is_in_the_inference_table():
    table = presets.inference_presets(4, 4)
    assert list(table) == list(presets.METHODS)
    assert "CDPruner" not in table and len(presets.ZOO) == 6
    for label, method in presets.ZOO.items():
        rows = table[label]
        assert [b for b, _ in rows] == [b for b in presets.BUDGETS if b in presets.ZOO_BUDGETS]
        assert all(cfg.name == f"mini-{method}-{b}" for b, cfg in rows)
    names = [cfg.name for rows in table.values() for _, cfg in rows if cfg is not None]
    assert len(names) == len(set(names))        # names key the evaluation cache
    only64 = presets.inference_presets(4, 4, zoo_budgets=(64,))
    assert [b for b, _ in only64["DART"]] == [64] and len(only64["DUET"]) == 3
    notes = presets.table_notes(table, 4)
    assert notes[0].startswith("CDPruner is not in the table") and "DART" in notes[1]
    assert presets.table_notes(presets.inference_presets(4, 4, ("DUET",)), 4) == []


def test_a_method_name_typo_is_refused():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['DivPrun'\].*'DivPrune'"):
        presets.inference_presets(4, 4, ("DUET", "DivPrun"))
    with pytest.raises(ValueError, match="CDPruner"):
        presets.inference_presets(4, 4, ("CDPruner",))
    with pytest.raises(ValueError, match="did you mean llava15-divprune-64"):
        presets.zoo("divprun", 64, 4, 4)


def test_vscan_shallow_layer_keeps_its_fraction_of_the_tower():
    assert [presets.shallow_vision_layer(v) for v in (24, 12, 8, 4, 3)] == [5, 2, 2, 1, 0]
    with pytest.raises(ValueError, match="2-layer tower has none"):
        presets.shallow_vision_layer(2)
