"""Everything a run needs before its first step: tokenizer, image processor, model, params."""
from __future__ import annotations

import os

import jax

from duet_jax.dtypes import parse_dtype
from duet_jax.models.config import LlavaConfig
from duet_jax.training.config import ConfigError, TrainConfig
from duet_jax.training.hosts import barrier, is_main
from duet_jax.training.random_model import (build_tokenizer, corpus_from_records,
                                            random_llava_config)

ASSETS_SUBDIR = "assets"        # tokenizer + processor of a random model, inside output_dir


def _dtype(name: str, key: str):
    try:
        return parse_dtype(name, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def compute_dtypes(cfg: TrainConfig):
    return (_dtype(cfg.model.dtype, "model.dtype"),
            _dtype(cfg.model.param_dtype, "model.param_dtype"))


def asset_dir(cfg: TrainConfig) -> str:
    """Where the tokenizer and image processor files live."""
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if cfg.model.checkpoint:
        return cfg.model.checkpoint
    return os.path.join(cfg.output_dir, ASSETS_SUBDIR)


def prepare_assets(cfg: TrainConfig, records) -> str:
    """Build a random model's tokenizer on process 0 (others wait); returns the asset dir."""
    directory = asset_dir(cfg)
    if cfg.model.checkpoint is None and cfg.model.tokenizer is None:
        if is_main():
            sizes = cfg.model.random
            build_tokenizer(directory, corpus_from_records(records), sizes.tokenizer_vocab_size,
                            sizes.image_size)
        barrier("tokenizer built")
    return directory


def load_tokenizer(directory: str):
    from duet_jax.data.tokenize import load_tokenizer as load

    try:
        return load(directory)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a tokenizer from {directory}: {e}; set model.tokenizer "
                          "to a directory with tokenizer files") from None


def checkpoint_config(cfg: TrainConfig) -> LlavaConfig:
    """The LlavaConfig of model.checkpoint, from its config and weight headers only."""
    from duet_jax.checkpoints.load import checkpoint_kind, llava_config, plan_conversion, read_json

    path = cfg.model.checkpoint
    if checkpoint_kind(path) == "converted":
        return llava_config(read_json(os.path.join(path, "config.json")))
    return plan_conversion(path, cfg.model.vision_tower).config


def model_config(cfg: TrainConfig, tokenizer) -> LlavaConfig:
    if cfg.model.checkpoint:
        return checkpoint_config(cfg)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ConfigError(f"the tokenizer at {asset_dir(cfg)} has no <image> token; a random "
                          "model needs one (leave model.tokenizer unset to build it)")
    return random_llava_config(cfg.model.random, vocab_size=len(tokenizer),
                               image_token_index=int(image_id),
                               pad_token_id=tokenizer.pad_token_id)


def geometry_config(cfg: TrainConfig) -> LlavaConfig:
    """The model's shapes before any asset exists: the checkpoint's config (headers only), or
    the random model's sizes with a placeholder vocabulary. Patch count and depth, which the
    reduction is checked against, do not depend on the tokenizer."""
    if cfg.model.checkpoint:
        return checkpoint_config(cfg)
    try:
        sizes = cfg.model.random
        return random_llava_config(sizes, vocab_size=sizes.tokenizer_vocab_size, image_token_index=0)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_reduction_name(cfg: TrainConfig):
    """The ReductionConfig that cfg.reduction names (not yet checked against a model)."""
    from duet_jax.reduction import resolve_reduction

    try:
        return resolve_reduction(cfg.reduction)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reduction: {e}") from None


def reduction_for(cfg: TrainConfig, model_cfg: LlavaConfig):
    """The ReductionConfig of cfg.reduction, checked against the model (None: full tokens)."""
    red = resolve_reduction_name(cfg)
    try:
        if red is not None:
            red.validate(model_cfg.vision.num_patches, model_cfg.text.num_hidden_layers)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reduction: {e}") from None
    if red is not None and red.stage2 is not None and red.stage2.queries not in ("all", "last"):
        raise ConfigError(f"reduction {red.name!r} uses queries={red.stage2.queries!r}, which has "
                          "no training query set here; use 'all' or 'last'")
    return red


def initial_params(cfg: TrainConfig, model, param_shardings) -> dict:
    """Params placed on their shardings: loaded from model.checkpoint, else random (seeded)."""
    if cfg.model.checkpoint:
        from duet_jax.checkpoints.load import load_params

        _, params = load_params(cfg.model.checkpoint, dtype=model.param_dtype,
                                shardings=param_shardings, vision_tower=cfg.model.vision_tower)
        return params
    return jax.jit(model.init, out_shardings=param_shardings)(jax.random.PRNGKey(cfg.seed))
