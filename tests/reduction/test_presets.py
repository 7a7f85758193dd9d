"""Configs, presets and budget accounting (docs/ALGORITHM.md §3.1, §4, §5).

Expected averages are the numbers printed in docs/ALGORITHM.md §4.2/§5 (the
paper's tables), not recomputed with the code under test.
"""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from duet_jax.reduction import (PRESET_TARGETS, PRESETS, ReductionConfig, Stage1Config,
                                Stage2Config, average_image_tokens, average_visual_tokens,
                                fastv_keep_count, from_dict, get_preset, resolve_reduction,
                                segment_bounds, stage_counts, vision_merge_size)

SPEC_AVERAGES = {   # name: (average, patches per crop, LM layers, crops)
    "llava15-duet-192": (191.75, 576, 32, 1), "llava15-duet-128": (128.0, 576, 32, 1),
    "llava15-duet-64": (63.75, 576, 32, 1), "llava15-duet-64-last": (63.75, 576, 32, 1),
    "llavanext-duet-640": (640.5, 576, 32, 5), "llavanext-duet-320": (318.75, 576, 32, 5),
    "llavanext-duet-160": (159.25, 576, 32, 5), "videollava-duet-960": (960.0, 256, 32, 8),
    "videollava-duet-136": (135.0, 256, 32, 8), "llava15-pdrop-270": (270.0, 576, 32, 1),
    "llava15-visionzip-192": (192.0, 576, 32, 1), "llava15-visionzip-128": (128.0, 576, 32, 1),
    "llava15-visionzip-64": (64.0, 576, 32, 1),
}


@pytest.mark.parametrize("name", sorted(SPEC_AVERAGES))
def test_average_tokens_reproduce_the_spec_tables(name):
    avg, patches, layers, crops = SPEC_AVERAGES[name]
    assert average_visual_tokens(name, patches, layers, crops) == avg


def test_stage1_sizes_and_counts_of_the_worked_examples():
    assert get_preset("llava15-duet-192").image_tokens(576) == 307
    assert get_preset("llava15-duet-128").image_counts(205) == [205, 102, 0]
    assert get_preset("llavanext-duet-640").image_tokens(576, crops=5) == 1025
    assert get_preset("videollava-duet-960").image_tokens(256, crops=8) == 1536
    assert get_preset("llava15-pdrop-270").image_counts(576) == [576, 288, 144, 72]
    # counts are relative to n_0 and floored: int(307 * 0.5) = 153, not 154
    assert stage_counts(307, [0.5, 0.0]) == [307, 153, 0]
    assert segment_bounds([16, 24], 32) == [(0, 16), (16, 24), (24, 32)]
    assert average_image_tokens([307, 153, 0], [16, 24], 32) == 191.75
    assert average_visual_tokens(None, 576, 32) == 576.0


@pytest.mark.parametrize("budget,keep", [(192, 166), (128, 98), (64, 30)])
def test_fastv_budgets(budget, keep):
    config = get_preset(f"llava15-fastv-{budget}")
    # avg = (K_f N + (L - K_f) k) / L (docs/ALGORITHM.md §5)
    assert average_visual_tokens(config, 576, 32) == (2 * 576 + 30 * keep) / 32
    assert abs(average_visual_tokens(config, 576, 32) - budget) <= 1
    assert config.stage2.positions == "keep" and config.stage2.queries == "last"
    assert fastv_keep_count(576, 1 - keep / 576) == keep


@pytest.mark.parametrize("name", sorted(PRESET_TARGETS))
def test_every_preset_with_a_target_lands_near_it(name):
    target, patches, layers, crops = PRESET_TARGETS[name]
    # Table 14's "136" evaluates to 135 and NeXT-320 to 318.75 (docs/ALGORITHM.md §4.2 notes)
    slack = 1.25 if name in ("llavanext-duet-320",) else 1.0
    assert abs(average_visual_tokens(name, patches, layers, crops) - target) <= slack
    get_preset(name).validate(patches, layers, crops=crops)


def test_qwen_presets_clip_per_image():
    config = get_preset("qwen25vl-duet-640")
    assert config.stage1.output_size(4000) == 870 + 153
    assert config.stage1.output_size(300) == 300          # d -> 299, c -> 1
    n = config.image_tokens(4000)
    # the intended formula of docs/ALGORITHM.md §4.2
    want = (14 * n + 7 * int(n / 2) + 7 * int(n / 4)) / 28
    assert average_visual_tokens(config, 4000, 28) == want
    assert get_preset("qwen25vl-duet-640-scripts").stage1.dominant == 540
    config.validate(300, 28)   # clipping is the documented Qwen behaviour


def test_stage1_config_sizes_agree_with_vision_merge_size():
    for name, config in PRESETS.items():
        s1 = config.stage1
        if s1 is not None and s1.cls_token:
            patches = PRESET_TARGETS[name][1]
            assert s1.output_size(patches) == vision_merge_size(patches, s1.dominant,
                                                                s1.contextual, s1.width, s1.mode)


@pytest.mark.parametrize("build,match", [
    (lambda: Stage2Config((16, 16), (0.5, 0.0)), "strictly increasing"),
    (lambda: Stage2Config((24, 16), (0.5, 0.0)), "strictly increasing"),
    (lambda: Stage2Config((16,), (1.5,)), r"in \[0, 1\]"),
    (lambda: Stage2Config((16,), (-0.1,)), r"in \[0, 1\]"),
    (lambda: Stage2Config((16, 24), (0.5,)), "one per layer"),
    (lambda: Stage2Config((16, 24), (0.25, 0.5)), "non-increasing"),
    (lambda: Stage2Config((0,), (0.5,)), ">= 1"),
    (lambda: Stage2Config((16,), (0.5,), queries="first"), "queries"),
    (lambda: Stage2Config((16,), (0.5,), positions="shift"), "positions"),
    (lambda: Stage2Config((2, 4), (), method="fastv", keep=(10, 5)), "fastv drops once"),
    (lambda: Stage2Config((2,), (0.5,), keep=(10,)), "not both"),
    (lambda: Stage1Config(5, 0, mode="visionzip"), "contextual >= 1"),
    (lambda: Stage1Config(0, 3), "dominant >= 1"),
    (lambda: Stage1Config(5, 3, mode="merge"), "mode"),
    (lambda: Stage1Config(5.0, 3), "int"),
])
def test_construction_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("config,args,match", [
    (ReductionConfig("x", Stage1Config(577, 3)), (576, 32), "dominant=577 exceeds"),
    (ReductionConfig("x", Stage1Config(500, 90)), (576, 32), "dominant \\+ contextual"),
    (ReductionConfig("x", Stage1Config(500, 90, mode="paper")), (576, 32), "dominant \\+"),
    (get_preset("llava15-duet-192"), (576, 24), r"layers \[24\] outside \[1, 23\]"),
    (get_preset("llava15-fastv-64"), (20, 32), "exceeds the 20 image tokens"),
])
def test_validate_errors(config, args, match):
    with pytest.raises(ValueError, match=match):
        config.validate(*args)


def test_validate_allows_requested_clipping():
    ReductionConfig("x", Stage1Config(500, 90)).validate(576, 32, allow_clipping=True)


def test_lookup_resolve_and_dict_round_trip():
    with pytest.raises(ValueError, match="llava15-duet-64"):
        get_preset("llava15-duet-65")
    assert resolve_reduction(None) is None and resolve_reduction("none") is None
    preset = get_preset("llava15-duet-64")
    assert resolve_reduction("llava15-duet-64") is preset and resolve_reduction(preset) is preset
    with pytest.raises(TypeError):
        resolve_reduction(64)
    for config in PRESETS.values():
        assert from_dict(config.to_dict()) == config
        hash(config)   # usable as a static jit argument
    custom = resolve_reduction({"preset": "llava15-duet-64", "stage2": {"queries": "last"}})
    assert custom.stage2 == dataclasses.replace(preset.stage2, queries="last")
    assert custom.stage1 == preset.stage1
    assert from_dict({"preset": "llava15-duet-64", "stage2": None}).stage2 is None
    yaml_like = {"name": "mine", "stage1": {"dominant": 54, "contextual": 10, "mode": "visionzip"},
                 "stage2": {"layers": [8, 16], "ratios": [0.5, 0.25], "queries": "last"}}
    mine = from_dict(yaml_like)
    assert mine.stage2.layers == (8, 16) and mine.stage1.mode == "visionzip"
    with pytest.raises(ValueError, match="did you mean dominant"):
        from_dict({"stage1": {"dominent": 54, "contextual": 10}})
    with pytest.raises(ValueError, match="did you mean stage2"):
        from_dict({"stage_2": {}})


def test_config_is_a_static_jit_argument():
    traces = []

    def count(x, config):
        traces.append(config.name)
        return x * config.image_tokens(576)

    fn = jax.jit(count, static_argnums=1)
    fn(jnp.ones(()), get_preset("llava15-duet-64"))
    fn(jnp.zeros(()), from_dict(get_preset("llava15-duet-64").to_dict()))
    assert traces == ["llava15-duet-64"]


def test_public_presets_module_spelling():
    """docs/API.md §3 names `duet_jax.presets`: importable as a module and as an attribute."""
    import duet_jax
    import duet_jax.presets as public
    from duet_jax.presets import get_preset as public_get

    assert duet_jax.presets is public
    assert public.PRESETS is PRESETS
    assert public_get("llava15-duet-64") == get_preset("llava15-duet-64")
