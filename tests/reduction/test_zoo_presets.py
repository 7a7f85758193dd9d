"""Zoo presets and their bad-input errors (docs/BASELINES.md §6, §9).

Expected counts and averages are the numbers docs/BASELINES.md §6/§9 print
(DART 68/132/196 kept from layer 2; pool 64/121/169; VScan 96->32, 192->64,
288->96), not recomputed with the code under test.
"""
from types import SimpleNamespace

import pytest

from duet_jax.api.base import Handle
from duet_jax.api.llava import Llava
from duet_jax.api.llava_next import LlavaNext
from duet_jax.api.llava_onevision import LlavaOnevision
from duet_jax.api.qwen25vl import Qwen25VL
from duet_jax.reduction import (PRESETS, SelectConfig, Stage2Config, average_visual_tokens,
                                from_dict, get_preset)

METHODS = ("divprune", "dart", "vispruner", "cdpruner", "vscan", "random", "pool")
# budget: (image tokens entering the LM per method, DART kept, VScan after layer 16)
LM_INPUT = {192: {"pool": 169, "vscan": 288}, 128: {"pool": 121, "vscan": 192},
            64: {"pool": 64, "vscan": 96}}
DART_KEPT = {192: 196, 128: 132, 64: 68}
DART_AVERAGE = {192: 219.75, 128: 159.75, 64: 99.75}
VSCAN_AFTER = {192: 96, 128: 64, 64: 32}


def llava_handle(patches=576, layers=32):
    """A LLaVA-1.5 handle with only what `Handle.reduction` reads (no weights)."""
    config = SimpleNamespace(vision=SimpleNamespace(num_patches=patches),
                             text=SimpleNamespace(num_hidden_layers=layers))
    return Llava(config, None, None)


@pytest.mark.parametrize("budget", [192, 128, 64])
@pytest.mark.parametrize("method", METHODS)
def test_every_zoo_preset_exists_with_its_real_counts(method, budget):
    config = get_preset(f"llava15-{method}-{budget}")
    n0 = config.image_tokens(576)
    counts = config.image_counts(n0)
    if method == "dart":
        assert counts == [576, DART_KEPT[budget]]
        assert config.stage2.layers == (2,) and config.stage2.positions == "keep"
        assert average_visual_tokens(config, 576, 32) == DART_AVERAGE[budget]
    elif method == "vscan":
        assert counts == [LM_INPUT[budget]["vscan"], VSCAN_AFTER[budget]]
        assert config.stage2.layers == (16,) and config.stage2.queries == "last"
        assert average_visual_tokens(config, 576, 32) == budget
    else:
        assert counts == [LM_INPUT[budget].get(method, budget)]
        assert average_visual_tokens(config, 576, 32) == LM_INPUT[budget].get(method, budget)
    assert from_dict(config.to_dict()) == config
    if method != "cdpruner":
        llava_handle().reduction(config.name)


# LLaVA-NeXT (576 patches, 32 layers) and OneVision-7B (729, 28), a 2x2 grid (5 crops):
# name: (kept from layer 2, per-layer average) as docs/BASELINES.md §9 prints them
FAMILY_DART = {"llavanext-dart-640": (644, 783.75), "llavanext-dart-320": (324, 483.75),
               "llavanext-dart-160": (164, 333.75), "llavaov-dart-810": (812, 28402 / 28),
               "llavaov-dart-403": (404, 635.5), "llavaov-dart-203": (204, 12594 / 28)}


@pytest.mark.parametrize("name", sorted(FAMILY_DART))
def test_next_and_onevision_dart_presets_keep_their_stated_counts(name):
    kept, average = FAMILY_DART[name]
    patches, layers = (729, 28) if name.startswith("llavaov") else (576, 32)
    config = get_preset(name)
    assert config.select is None and config.stage2.method == "dart"
    assert config.stage2.layers == (2,) and config.stage2.positions == "keep"
    assert config.image_counts(5 * patches) == [5 * patches, kept]
    assert average_visual_tokens(config, patches, layers, crops=5) == pytest.approx(average)
    assert from_dict(config.to_dict()) == config
    side = 384 if name.startswith("llavaov") else 336
    cls = LlavaOnevision if name.startswith("llavaov") else LlavaNext
    pins = ((side, side), (2 * side, 2 * side))
    handle = cls(SimpleNamespace(vision=SimpleNamespace(num_patches=patches, image_size=side),
                                 text=SimpleNamespace(num_hidden_layers=layers),
                                 image_grid_pinpoints=pins, num_frames=8), None, None)
    assert handle.reduction(name) is config
    with pytest.raises(ValueError, match=rf"^llava15-pool-64: pool is not wired into "
                                         rf"{cls.__name__} \(its zoo methods: dart, divprune, "
                                         rf"random\)"):
        handle.reduction("llava15-pool-64")


# Qwen2.5-VL: percent kept -> {image tokens: (DivPrune / random kept, DART kept from layer 2)},
# as docs/BASELINES.md §9 prints them (a 391-token image is 476 x 644 pixels; None: refused)
QWEN_KEPT = {33: {576: (192, 196), 391: (130, 132), 64: (21, 20)},
             22: {576: (128, 132), 391: (87, 84), 64: (14, 12)},
             11: {576: (64, 68), 391: (43, 44), 64: (7, None)}}


@pytest.mark.parametrize("percent", sorted(QWEN_KEPT))
def test_qwen_zoo_presets_keep_a_fraction_of_each_image(percent):
    handle = Qwen25VL(SimpleNamespace(text=SimpleNamespace(num_hidden_layers=28)), None, None)
    for method in ("divprune", "random", "dart"):
        config = get_preset(f"qwen25vl-{method}-{percent}pct")
        assert from_dict(config.to_dict()) == config and handle.reduction(config.name) is config
        for n, (kept, dart) in QWEN_KEPT[percent].items():
            if method == "dart":
                assert config.stage2.layers == (2,) and config.stage2.positions == "keep"
                if dart is not None:
                    assert config.image_counts(config.image_tokens(n)) == [n, dart]
                    config.validate(n, 28)
                else:
                    with pytest.raises(ValueError, match=rf"^{config.name}: DART keeps 4 of the "
                                                         rf"{n} image tokens .*larger ratio or image$"):
                        config.validate(n, 28)
            else:
                assert config.select.method == method and config.stage2 is None
                assert config.image_counts(config.image_tokens(n)) == [kept]
    with pytest.raises(ValueError, match=r"^llava15-pool-64: pool is not wired into Qwen25VL "
                                         r"\(its zoo methods: dart, divprune, random\); use"):
        handle.reduction("llava15-pool-64")


@pytest.mark.parametrize("family,budgets,patches,layers", [
    ("llavanext", (640, 320, 160), 576, 32), ("llavaov", (810, 403, 203), 729, 28)])
@pytest.mark.parametrize("method", ["divprune", "random"])
def test_next_and_onevision_block_selection_presets_keep_their_budget(family, budgets, patches,
                                                                      layers, method):
    for budget in budgets:
        config = get_preset(f"{family}-{method}-{budget}")
        assert config.stage1 is None and config.stage2 is None
        assert config.select == SelectConfig(method, budget)
        # one selection over the whole 2x2-grid block, so the average is the budget itself
        assert config.image_tokens(patches, crops=5) == budget
        assert average_visual_tokens(config, patches, layers, crops=5) == budget
        config.validate(patches, layers, crops=5)


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_cdpruner_needs_a_clip_text_tower(budget):
    name = f"llava15-cdpruner-{budget}"
    with pytest.raises(ValueError, match=f"^{name}: cdpruner needs .*CLIP text tower.*"
                                         "clip_text_tower.*; use --clip-text-tower DIR"):
        llava_handle().reduction(name)
    # a checkpoint offering the input passes the check
    get_preset(name).validate(576, 32, inputs=("clip_text_tower",))


@pytest.mark.parametrize("mapping,match", [
    ({"preset": "llava15-divprune-64", "select": {"budget": 700}},
     r"^llava15-divprune-64: divprune keeps 700 tokens \(select.budget\).*image block has 576; "
     r"give a budget"),
    ({"preset": "llava15-random-64", "select": {"budget": None, "ratio": 1.5}},
     r"^llava15-random-64: select.ratio=1.5 is outside \(0, 1\]"),
    ({"preset": "llava15-divprune-64", "select": {"budget": None, "ratio": 0.0}},
     r"^llava15-divprune-64: select.ratio=0.0 is outside \(0, 1\]"),
    ({"preset": "llava15-vispruner-64", "select": {"important_ratio": 0.0}},
     r"^llava15-vispruner-64: select.important_ratio=0.0 is outside \(0, 1\]"),
    ({"preset": "llava15-vispruner-64", "select": {"budget": 63}},
     r"^llava15-vispruner-64: VisPruner .* odd .*pick T or the ratio"),
    ({"preset": "llava15-vscan-64", "select": {"shallow_layer": -1}},
     r"^llava15-vscan-64: select.shallow_layer=-1 is not a CLIP layer index; give an int >= 0"),
    ({"preset": "llava15-vscan-64", "stage2": {"keep": [100]}},
     r"^llava15-vscan-64: stage2.keep=100 exceeds the 96 image tokens.*lower stage2.keep"),
    ({"preset": "llava15-dart-64", "stage2": {"keep": [70]}},
     r"^llava15-dart-64: .*DART keeps 4 \+ 8 x token_topk.*keep=70"),
    ({"preset": "llava15-dart-64", "stage2": {"positions": "renumber"}},
     r"^llava15-dart-64: .*dart' needs keep=\[n\].*positions='keep'"),
    ({"preset": "qwen25vl-dart-11pct", "stage2": {"keep": [68]}},
     r"^qwen25vl-dart-11pct: .*dart' needs keep=\[n\] .* or ratios=\[r\]"),

    ({"preset": "llava15-pool-64", "select": {"method": "median"}},
     r"^llava15-pool-64: select.method='median' is not one of"),
    ({"preset": "llava15-dart-64", "select": {"method": "pool", "budget": 64},
      "stage1": {"dominant": 10, "contextual": 2}},
     r"^llava15-dart-64: give stage1 or select, not both"),
])
def test_bad_zoo_input_is_one_line_naming_the_preset_and_the_fix(mapping, match):
    with pytest.raises(ValueError, match=match) as err:
        llava_handle().reduction(mapping)
    assert "\n" not in str(err.value)


def test_a_budget_beyond_a_smaller_tower_is_refused_before_compiling():
    handle = llava_handle(patches=144, layers=4)
    with pytest.raises(ValueError, match="llava15-divprune-192: divprune keeps 192 tokens"):
        handle.reduction("llava15-divprune-192")
    with pytest.raises(ValueError, match="llava15-dart-192: stage2.keep=196 exceeds the 144"):
        handle.reduction("llava15-dart-192")


@pytest.mark.parametrize("name", ["llava15-dart-64", "llava15-pool-128"])
def test_other_families_refuse_zoo_presets(name):
    class OtherFamily(Handle):
        def check_reduction(self, red, media):
            raise AssertionError("the zoo check comes first")
    with pytest.raises(ValueError, match=f"^{name}: .* not wired into OtherFamily \\(its zoo methods: none\\)"):
        OtherFamily(None, None, None).reduction(name)


def test_select_config_sizes():
    assert SelectConfig("divprune", ratio=0.098).count(576) == 56      # the DivPrune default
    assert SelectConfig("vscan", 100).output_size(576) == 98           # docs/BASELINES.md §5: T=100 keeps 98
    assert SelectConfig("pool", 128).output_size(576) == 121
    with pytest.raises(ValueError, match="exactly one of budget and ratio"):
        SelectConfig("random", 64, ratio=0.5)
    with pytest.raises(ValueError, match="drops once"):
        Stage2Config((2, 8), (), positions="keep", method="dart", keep=(68, 20))
    zoo = [n for n in PRESETS if n.split("-")[1] in METHODS]
    assert sum(1 for n in zoo if n.startswith("llava15-")) == 21
    blocks = [f"{family}-{m}-{b}" for family, budgets in (("llavanext", (640, 320, 160)),
                                                          ("llavaov", (810, 403, 203)))
              for m in ("divprune", "random") for b in budgets]
    qwen = [f"qwen25vl-{m}-{p}pct" for m in ("divprune", "random", "dart") for p in QWEN_KEPT]
    assert sorted(n for n in zoo if not n.startswith("llava15-")) == sorted([*FAMILY_DART,
                                                                             *blocks, *qwen])
