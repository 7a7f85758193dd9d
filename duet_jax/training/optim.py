"""Optimizer: AdamW + warmup/decay schedule + global-norm clipping, frozen parts via multi_transform.

Semantics follow the HF Trainer that LLaVA-1.5 trains with: warmup steps =
ceil(warmup_ratio * total_steps), lr(0) = 0 when warming up, cosine or
linear decay to 0 at `total_steps`; weight decay skips biases and norm
scales; clipping uses the global norm of the trained gradients.
"""
from __future__ import annotations

import math
from typing import Tuple

import jax
import optax

from duet_jax.training.config import OptimConfig

TRAINED, FROZEN = "trained", "frozen"

# Top-level param groups each recipe trains (the rest stay bit-identical).
RECIPES = {
    "finetune": ("projector", "text"),      # LLaVA-1.5 stage 2: CLIP frozen
    "pretrain": ("projector",),             # LLaVA-1.5 stage 1: only the projector
    "full": ("vision", "projector", "text"),
}


def trained_groups(recipe: str) -> Tuple[str, ...]:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {tuple(RECIPES)}")
    return RECIPES[recipe]


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """lr as a function of the 0-based optimizer step (HF `get_*_schedule_with_warmup`)."""
    warm = warmup_steps(cfg, total_steps)
    decay = max(1, total_steps - warm)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=0.0)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, 0.0, decay)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use cosine, linear or constant")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), after], [warm])


def param_labels(params: dict, recipe: str) -> dict:
    """Same tree as params with leaves 'trained' / 'frozen' (by top-level group)."""
    groups = trained_groups(recipe)
    return {name: jax.tree.map(lambda _, n=name: TRAINED if n in groups else FROZEN, sub)
            for name, sub in params.items()}


def decay_mask(params: dict) -> dict:
    """True where weight decay applies: every leaf except biases and norm scales (HF rule)."""
    def one(path, _):
        leaf = str(getattr(path[-1], "key", path[-1]))
        return leaf not in ("bias", "scale")
    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, params: dict) -> optax.GradientTransformation:
    """AdamW on the recipe's trained groups, zero updates (and no state) for the frozen ones.

    `params` (arrays or ShapeDtypeStructs) fixes the label and decay-mask trees.
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.max_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.multi_transform({TRAINED: optax.chain(*chain), FROZEN: optax.set_to_zero()},
                                 param_labels(params, cfg.recipe))
