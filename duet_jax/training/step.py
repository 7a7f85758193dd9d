"""Loss and the jitted, sharded train step (forward + backward + optimizer update).

Loss: next-token cross-entropy over the non -100 targets of the final
(shortest) sequence, `logits[:, :-1]` against `labels[:, 1:]`, exactly HF
`LlavaForConditionalGeneration`'s loss for one micro-batch. With gradient
accumulation the optimizer step minimises the mean over *all* targets of the
global batch (sum of per-token losses / number of targets), so the result
does not depend on how the batch is split into micro-batches or devices
(HF Trainer's `num_items_in_batch` normalisation).
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from duet_jax.models.llava import PARAM_AXES, LlavaModel
from duet_jax.labels import IGNORE_INDEX
from duet_jax.sharding import param_shardings
from duet_jax.training.batching import StepLayout, stacked_sharding


def cross_entropy_sums(logits: jax.Array, labels: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """logits [B, L, V] float32, labels [B, L] -> (sum of shifted CE, number of targets)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), jnp.where(mask, targets, 0))
    return jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask).astype(jnp.int32)


def loss_sums(model: LlavaModel, params: dict, batch: Dict[str, jax.Array], reduction,
              layout: StepLayout) -> Tuple[jax.Array, jax.Array]:
    """One micro-batch [B, ...] -> (CE sum, target count) after any DUET reduction.

    A text-only step (`layout.any_image` False) passes no pixels: the model then runs
    neither the tower, whose output no sample would splice in, nor a reduction.
    """
    pixels = batch["pixel_values"] if layout.any_image else None
    logits, seq = model.apply(params, batch["input_ids"], pixels,
                              batch["attention_mask"], batch["labels"], reduction,
                              layout.images_in_every_sample, train=True,
                              segment_lengths=layout.segment_lengths,
                              splice_length=layout.splice_length)
    return cross_entropy_sums(logits, seq.labels)


def mean_loss(model: LlavaModel, params: dict, batch, reduction, layout: StepLayout) -> jax.Array:
    """Mean next-token CE of one micro-batch (HF's `loss`)."""
    total, count = loss_sums(model, params, batch, reduction, layout)
    return total / jnp.maximum(count, 1)


def split_params(params: dict, groups) -> Tuple[dict, dict]:
    trained = {k: v for k, v in params.items() if k in groups}
    frozen = {k: v for k, v in params.items() if k not in groups}
    return trained, frozen


def accumulate_gradients(params: dict, batch: Dict[str, jax.Array], *, model: LlavaModel,
                         reduction, groups, layout: StepLayout):
    """Gradients of the global-batch mean loss w.r.t. the trained groups.

    batch arrays [A, B, ...] (A micro-batches, scanned). Returns (grads of the
    trained groups in float32, metrics {loss, targets, tokens}). Only the trained
    groups are differentiated, so a frozen tower gets no backward pass.
    """
    trained, frozen = split_params(params, groups)

    def micro(carry, mb):
        grads_acc, ce_acc, n_acc, tok_acc = carry

        def f(tp):
            return loss_sums(model, {**frozen, **tp}, mb, reduction, layout)

        (ce, n), grads = jax.value_and_grad(f, has_aux=True)(trained)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
        tokens = jnp.sum(mb["attention_mask"]).astype(jnp.int32)
        return (grads_acc, ce_acc + ce, n_acc + n, tok_acc + tokens), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trained)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    (grads, ce, count, tokens), _ = jax.lax.scan(micro, init, batch)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    return grads, {"loss": ce / denom, "targets": count, "tokens": tokens}


def train_step(state: dict, batch: Dict[str, jax.Array], *, model: LlavaModel, reduction,
               optimizer: optax.GradientTransformation, groups, layout: StepLayout):
    """state {params, opt_state, step, rng}; batch arrays [A, B, ...] (A micro-batches).

    Frozen params are passed through untouched, so they stay bit-identical.
    """
    trained, frozen = split_params(state["params"], groups)
    grads, metrics = accumulate_gradients(state["params"], batch, model=model,
                                          reduction=reduction, groups=groups, layout=layout)
    # multi_transform wants the full tree; the frozen entries are dead code (set_to_zero).
    full = {**jax.tree.map(jnp.zeros_like, frozen),
            **jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trained)}
    updates, opt_state = optimizer.update(full, state["opt_state"], state["params"])
    new_trained = optax.apply_updates(trained, {k: updates[k] for k in trained})
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    new_state = {"params": {**frozen, **new_trained}, "opt_state": opt_state,
                 "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, metrics


def init_state(params: dict, optimizer: optax.GradientTransformation, seed: int) -> dict:
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(seed)}


def state_shardings(abstract_state: dict, optimizer, mesh: Mesh,
                    axes_table: dict = PARAM_AXES) -> dict:
    """NamedShardings of the train state: params by their model's logical axes
    (`axes_table`, default LLaVA-1.5's `PARAM_AXES`) and the rules of `duet_jax.sharding`,
    optimizer moments like their params, scalars and the PRNG key replicated."""
    replicated = NamedSharding(mesh, P())
    p_sh = param_shardings(abstract_state["params"], mesh, axes_table)
    opt_sh = optax.tree_map_params(
        optimizer, lambda x, sh: x if isinstance(x, optax.MaskedNode) else sh,
        abstract_state["opt_state"], p_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return {"params": p_sh, "opt_state": opt_sh, "step": replicated, "rng": replicated}


class StepFunctions:
    """Compiled train steps, one per `StepLayout`, with explicit in/out shardings."""

    def __init__(self, model: LlavaModel, reduction, optimizer, groups, mesh: Mesh,
                 shardings: dict):
        self.model, self.reduction, self.optimizer = model, reduction, optimizer
        self.groups, self.mesh, self.shardings = tuple(groups), mesh, shardings

    @functools.lru_cache(maxsize=None)
    def get(self, layout: StepLayout):
        fn = functools.partial(train_step, model=self.model, reduction=self.reduction,
                               optimizer=self.optimizer, groups=self.groups, layout=layout)
        batch_sh = {"input_ids": stacked_sharding(self.mesh, 3),
                    "attention_mask": stacked_sharding(self.mesh, 3),
                    "labels": stacked_sharding(self.mesh, 3),
                    "pixel_values": stacked_sharding(self.mesh, 5)}
        replicated = NamedSharding(self.mesh, P())
        metrics_sh = {k: replicated for k in ("loss", "grad_norm", "targets", "tokens")}
        return jax.jit(fn, in_shardings=(self.shardings, batch_sh),
                       out_shardings=(self.shardings, metrics_sh), donate_argnums=0)

    def __call__(self, state: dict, batch: dict, layout: StepLayout):
        return self.get(layout)(state, batch)
