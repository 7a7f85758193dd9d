"""Typed configs: YAML + base chain + --set overrides, clear errors for unknown keys and bad values."""
import glob
import os

import pytest

from duet_jax.training.config import ConfigError, TrainConfig, load_config, valid_keys
from tests.training.conftest import ROOT, TINY_YAML

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_overrides_reach_nested_sections_and_coerce_types():
    cfg = load_config(TINY_YAML, ["optim.lr=1e-4", "max_steps=5", "output_dir=/tmp/x",
                                  "model.random.text_layers=2", "data.length_buckets=[64, 128]",
                                  "checkpoint.async_save=false", "reduction=llava15-duet-64"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)   # YAML reads "1e-4" as str
    assert cfg.max_steps == 5 and cfg.output_dir == "/tmp/x"
    assert cfg.model.random.text_layers == 2 and cfg.model.random.text_heads == 4  # rest kept
    assert cfg.data.length_buckets == (64, 128)
    assert cfg.checkpoint.async_save is False
    assert cfg.reduction == "llava15-duet-64"
    assert cfg.accumulation_steps == cfg.global_batch_size // cfg.micro_batch_size


@pytest.mark.parametrize("override, closest", [
    ("optim.lrr=1", "optim.lr"), ("max_step=3", "max_steps"),
    ("model.random.text_layer=2", "model.random.text_layers"), ("dat.max_length=5", "data.max_length"),
])
def test_unknown_override_key_names_closest(override, closest):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        load_config(TINY_YAML, [override])
    assert closest in str(e.value)


def test_unknown_key_in_file_and_bad_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {TINY_YAML}\noptim:\n  warmup_ration: 0.1\n")
    with pytest.raises(ConfigError, match="optim.warmup_ratio"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="optim.lr.*expects float"):
        load_config(TINY_YAML, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        load_config(TINY_YAML, ["global_batch_size=10", "micro_batch_size=4"])
    with pytest.raises(ConfigError, match="optim.recipe"):
        load_config(TINY_YAML, ["optim.recipe=everything"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(TINY_YAML, ["seed.x=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TINY_YAML, ["seed"])


def test_base_chain_overrides_section_by_section(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY_YAML}\noptim: {{lr: 0.5}}\n")
    cfg = load_config(str(child))
    tiny = load_config(TINY_YAML)
    assert cfg.optim.lr == 0.5 and cfg.optim.warmup_ratio == tiny.optim.warmup_ratio
    assert cfg.model == tiny.model


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_load_and_name_valid_reductions(path):
    from duet_jax.reduction import resolve_reduction

    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    red = resolve_reduction(cfg.reduction)
    name = os.path.basename(path)
    if name.startswith("llava15-finetune"):
        # LLaVA-1.5 fine-tune stage defaults (docs/ALGORITHM.md §7).
        o = cfg.optim
        assert (o.lr, o.warmup_ratio, o.schedule, o.weight_decay) == (2e-5, 0.03, "cosine", 0.0)
        assert (cfg.global_batch_size, cfg.num_epochs, cfg.data.max_length) == (128, 1, 2048)
        assert cfg.model.dtype == "bfloat16" and cfg.model.param_dtype == "float32"
        assert cfg.model.remat and o.recipe == "finetune"
        budget = name.rsplit("-", 1)[-1].split(".")[0]
        assert (red is None) == (budget == "full")
        if red is not None:
            assert red.name == f"llava15-duet-{budget}"


def test_every_valid_key_is_settable():
    for key in valid_keys():
        # sections and free-form values accept mappings; the check is that the key resolves
        from duet_jax.training.config import check_key
        check_key(key)
