"""Qwen2.5-VL with DUET: Stage 1 in place on the merged vision tokens, Stage 2 in the LM.

Stage 1 (docs/ALGORITHM.md §2.6): scores/metric from the last vision block's full
attention, `vision_merge_in_place` on the post-merger embeddings, and the
prompt is gathered so the K kept rows sit where the image block was, each
with its original M-RoPE ids (the text after the image keeps its ids too).
Stage 2 (docs/ALGORITHM.md §3.2-3.4 project default, §3.10) is the shared segment runner
(`duet_jax.models.segments`) with the `Qwen2Model.stage2_scores` hook:
next-layer q/k with biases and M-RoPE, causal mask, GQA, counts relative to
n_0 = K, `positions='keep'` on all three M-RoPE axes.
Zoo methods (docs/BASELINES.md §9): DivPrune and random (`select`) choose among each
image's merged tokens at the LM input (`duet_jax.models.zoo.block_keep`) and the
prompt is gathered as after Stage 1, kept rows at their original M-RoPE ids; DART is
a Stage-2 method of the segment runner (layer 2, positions kept).
Every length is static: grids and the presets' counts are host-known. The
reduced paths take batch 1 (the official setting) or a batch whose samples hold
one image each, all of one grid (what resolution buckets give); the unreduced
path any batch.

Generation: prefill keeps each segment's KV cache; a decode token's M-RoPE id
is `next_position + t` on all three axes (HF's rope delta), at every layer.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.qwen25vl import Qwen25VLModel
from duet_jax.models.qwen_vision import stage1_inputs, vision_forward
from duet_jax.models.segments import Sequence, gather_sequence, run_language_model
from duet_jax.models.zoo import block_keep
from duet_jax.labels import IGNORE_INDEX
from duet_jax.reduction.stage1_nocls import vision_merge_in_place
from duet_jax.reduction.stage2 import drop_gather_index
from duet_jax.reduction.zoo_config import zoo_method


class QwenForward(NamedTuple):
    hidden: jax.Array         # [B, L', D] before the final norm
    valid: jax.Array          # [B, L'] bool
    positions: jax.Array      # [3, B, L'] M-RoPE ids of the final sequence
    segments: list            # duet_jax.models.segments.Segment per layer segment
    stage1_index: Optional[jax.Array]   # [B, K] kept merged-token indices (Stage 1 or select)
    kept: list                # Stage-2 keep [B, n_s] per boundary (relative to the block)


def check_reduction(cfg, reduction, batch: int, grids: tuple):
    """One-line ValueError for what cannot run on this batch (`batch` samples, image
    `grids`): the handle calls it on the host before the jitted call (an error raised
    while tracing gains JAX's note), `reduced_forward` again for direct callers."""
    if reduction is None:
        return
    if batch > 1 and (len(grids) != batch or len(set(grids)) != 1):
        raise ValueError(f"a reduced Qwen2.5-VL batch of {batch} needs one image per sample, all "
                         f"of one grid (got grids {grids}); bucket the images "
                         "(Qwen25VL.encode does) or run batch 1")
    s2 = reduction.stage2
    if reduction.stage1 is not None and reduction.stage1.cls_token:
        raise ValueError(f"{reduction.name}: Qwen2.5-VL has no CLS token; use a "
                         "Stage1Config(cls_token=False) preset (qwen25vl-duet-*)")
    if s2 is not None and (s2.positions != "keep" or s2.method not in ("pdrop", "dart")
                           or s2.queries not in ("all", "last")):
        raise ValueError(f"{reduction.name}: Qwen2.5-VL Stage 2 supports methods 'pdrop' and "
                         "'dart', positions 'keep' and queries 'all'/'last'")
    if zoo_method(reduction) is not None and grids:
        if len(grids) > batch:
            raise ValueError(f"{reduction.name}: {zoo_method(reduction)} reads one image block "
                             f"per sample (got {len(grids)} images for a batch of {batch}); "
                             "give each sample one image")
        # the budget against this batch's image (one grid for all: checked above)
        reduction.validate(int(np.prod(grids[0])) // cfg.vision.merge_unit,
                           cfg.text.num_hidden_layers)


def _stage1(model, params, vout, grids, seq: Sequence, s1):
    """Per sample (one image each, one grid for all: `grids[:1]` is every image's)."""
    cfg = model.config
    h, image_start = seq.hidden, seq.image_start
    b = h.shape[0]
    last = vout.last_input.reshape(b, -1, vout.last_input.shape[-1])   # images are contiguous
    scores, metric = jax.vmap(lambda x: stage1_inputs(cfg.vision, params["vision"], x,
                                                      grids[:1]))(last)
    emb = vout.embeds.astype(h.dtype).reshape(b, -1, vout.embeds.shape[-1])
    merge = vision_merge_in_place(scores, metric, emb, dominant=s1.dominant,
                                  contextual=s1.contextual, width=s1.width)
    k = merge.tokens.shape[1]
    seq = keep_image_rows(seq, merge.index, emb.shape[1])
    rel = jnp.arange(seq.hidden.shape[1])[None] - image_start[:, None]
    in_block = (rel >= 0) & (rel < k)
    rows = jnp.take_along_axis(merge.tokens, jnp.clip(rel, 0, k - 1)[..., None], axis=1)
    return seq._replace(hidden=jnp.where(in_block[..., None], rows, seq.hidden)), merge.index


def keep_image_rows(seq: Sequence, index, n_img: int) -> Sequence:
    """`seq` gathered so the image rows `index` [B, K] (ascending, relative to each
    sample's block of `n_img`) sit where the block was, every row with its original
    M-RoPE ids (the text after the image keeps its ids too)."""
    k = index.shape[1]
    src, ok = drop_gather_index(index, seq.image_start, seq.valid.sum(-1),
                                jnp.zeros(index.shape[0], bool), n_prev=n_img,
                                out_len=seq.hidden.shape[1] - (n_img - k))
    return gather_sequence(seq, src, ok, "keep")


def reduced_forward(model: Qwen25VLModel, params, input_ids, pixel_values, grids: tuple,
                    positions, attention_mask=None, reduction=None, *,
                    return_kv: bool = False) -> QwenForward:
    """input_ids [B, L], pixel_values [N, patch_dim], positions [3, B, L] (`rope_index`)."""
    cfg = model.config
    check_reduction(cfg, reduction, input_ids.shape[0], grids)
    vout = None if pixel_values is None else vision_forward(
        cfg.vision, params["vision"], pixel_values, grids, model.dtype)
    h = model.embed(params, input_ids, None if vout is None else vout.embeds)
    valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None
             else attention_mask.astype(bool))
    is_img = input_ids == cfg.image_token_id
    image_start = jnp.where(is_img.any(-1), jnp.argmax(is_img, axis=-1), -1).astype(jnp.int32)
    seq = Sequence(h, valid, positions, jnp.full(input_ids.shape, IGNORE_INDEX, jnp.int32),
                   image_start, image_start >= 0, valid, jnp.zeros(input_ids.shape, bool))
    s1 = reduction.stage1 if reduction is not None else None
    s2 = reduction.stage2 if reduction is not None and vout is not None else None
    stage1_index = None
    n0 = 0 if vout is None else vout.embeds.shape[0] // input_ids.shape[0]
    if s1 is not None and vout is not None:
        seq, stage1_index = _stage1(model, params, vout, grids, seq, s1)
        n0 = stage1_index.shape[1]
    select = reduction.select if reduction is not None and vout is not None else None
    if select is not None:   # the kept indices stand where Stage 1's would (stage1_index)
        emb = vout.embeds.reshape(input_ids.shape[0], n0, -1)
        stage1_index = block_keep(emb, [n0] * input_ids.shape[0], select)
        seq, n0 = keep_image_rows(seq, stage1_index, n0), stage1_index.shape[1]
    seq, segments, kept = run_language_model(model.text, params["text"], seq, n0, s2,
                                             return_kv=return_kv)
    return QwenForward(seq.hidden, seq.valid, seq.positions, segments, stage1_index, kept)


@functools.partial(jax.jit, static_argnames=("model", "grids", "reduction"))
def reduced_logits(model, params, input_ids, pixel_values, grids, positions, attention_mask,
                   reduction):
    """Jitted logits [B, L', V] of the (reduced) prompt, plus the final validity [B, L']."""
    fwd = reduced_forward(model, params, input_ids, pixel_values, grids, positions,
                          attention_mask, reduction)
    return model.text.head(params["text"], fwd.hidden), fwd.valid
