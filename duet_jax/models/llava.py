"""LLaVA-1.5 assembly: CLIP tower -> 2-layer GELU projector -> spliced into Llama.

With a `ReductionConfig`, Stage 1 (vision-to-vision merge) runs inside the
CLIP selection layer and Stage 2 (text-to-vision drop) runs between static
segments of the Llama stack; see `duet_jax.models.segments`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.clip import PARAM_AXES as CLIP_PARAM_AXES, CLIPVisionTower
from duet_jax.models.common import ACTIVATIONS, unstack_layers
from duet_jax.models.config import LlavaConfig
from duet_jax.models.llama import PARAM_AXES as LLAMA_PARAM_AXES, LlamaModel
from duet_jax.models.segments import Sequence, run_language_model
from duet_jax.models.zoo import select_image_tokens
from duet_jax.labels import IGNORE_INDEX


class ImageFeatures(NamedTuple):
    tokens: jax.Array                 # [B, K, D_text] projected image tokens
    positions: Optional[jax.Array]    # [B, K] vision-sequence position of each row (Stage 1)
    merge: Optional[object] = None    # Stage-1 output (for kept-token pictures)


class Forward(NamedTuple):
    sequence: Sequence        # final (shortest) sequence, hidden before the final norm
    segments: tuple           # duet_jax.models.segments.Segment per layer segment
    kept: tuple               # [B, n_s] kept image indices per Stage-2 boundary
    features: ImageFeatures


def unstack_params(params: dict, *, donate: bool = False) -> dict:
    """The inference layout of LLaVA params: CLIP and Llama layers as tuples of
    per-layer trees (`duet_jax.models.common.unstack_layers`); same math, faster
    reduced segments on CPU. Training and checkpoints keep the stacked layout.
    `donate=True` frees each stacked leaf once split (`params` is unusable after)."""
    out = dict(params)
    for part in ("vision", "text"):
        if not isinstance(params[part]["layers"], tuple):
            out[part] = {**params[part],
                         "layers": unstack_layers(params[part]["layers"], donate=donate)}
    return out


@dataclasses.dataclass(frozen=True)
class LlavaModel:
    """Pure LLaVA-1.5: `model.apply(params, input_ids, pixel_values, ...)`."""
    config: LlavaConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @property
    def vision(self) -> CLIPVisionTower:
        return CLIPVisionTower(self.config.vision, self.dtype, self.param_dtype)

    @property
    def text(self) -> LlamaModel:
        return LlamaModel(self.config.text, self.dtype, self.param_dtype, self.remat)

    def init(self, rng: jax.Array) -> dict:
        k_v, k_p1, k_p2, k_t = jax.random.split(rng, 4)
        dv, dt = self.config.vision.hidden_size, self.config.text.hidden_size
        normal = lambda k, shape: (0.02 * jax.random.normal(k, shape)).astype(self.param_dtype)
        zeros = lambda n: jnp.zeros((n,), self.param_dtype)
        projector = {"linear_1": {"kernel": normal(k_p1, (dv, dt))},
                     "linear_2": {"kernel": normal(k_p2, (dt, dt))}}
        if self.config.multimodal_projector_bias:
            projector["linear_1"]["bias"] = zeros(dt)
            projector["linear_2"]["bias"] = zeros(dt)
        return {"vision": self.vision.init(k_v), "projector": projector, "text": self.text.init(k_t)}

    def project(self, params: dict, x: jax.Array) -> jax.Array:
        """Projector: [B, K, Dv] -> [B, K, Dt]."""
        act = ACTIVATIONS[self.config.projector_hidden_act]
        for i, name in enumerate(("linear_1", "linear_2")):
            p = params["projector"][name]
            x = x.astype(self.dtype) @ p["kernel"].astype(self.dtype)
            if "bias" in p:
                x = x + p["bias"].astype(self.dtype)
            if i == 0:
                x = act(x)
        return x

    def image_features(self, params: dict, pixel_values: jax.Array, stage1=None) -> ImageFeatures:
        """pixel_values [B, 3, H, W] -> projected image tokens [B, K, Dt]."""
        layer = self.config.feature_layer_index
        if stage1 is None:
            out = self.vision.apply(params["vision"], pixel_values, stop_after=layer)
            feats = out.hidden if self.config.vision_feature_select_strategy == "full" else out.hidden[:, 1:]
            return ImageFeatures(self.project(params, feats), None)
        from duet_jax.reduction import vision_merge   # models call reduction, never the reverse
        out = self.vision.apply(params["vision"], pixel_values, stop_after=layer, probe_layer=layer,
                                probe_full_attn=stage1.mode == "paper")
        kwargs = {"attn": out.probe.attn} if stage1.mode == "paper" else {}
        merged = vision_merge(out.probe.cls_attn, out.hidden, out.probe.metric,
                              dominant=stage1.dominant, contextual=stage1.contextual,
                              width=stage1.width, mode=stage1.mode, **kwargs)
        # No stop_gradient here: selection (top_k, argmax) carries none anyway, and a
        # frozen tower is never differentiated (training splits off the trained groups),
        # while an unfrozen one must get gradients through the kept rows (docs/ALGORITHM.md §7).
        return ImageFeatures(self.project(params, merged.tokens), merged.positions, merged)

    def splice(self, params: dict, input_ids: jax.Array, feats: jax.Array,
               attention_mask: Optional[jax.Array], labels: Optional[jax.Array],
               images_in_every_sample: bool = True,
               prompt_lengths: Optional[jax.Array] = None,
               salient_mask: Optional[jax.Array] = None,
               out_length: Optional[int] = None) -> Sequence:
        """Replaces each sample's block of `image_seq_length` image-token ids by its K features.

        input_ids [B, L] (llava-hf convention, right padding), feats [B, K, Dt].
        Output length is L - (image_seq_length - K) when every sample has an image,
        else L (static either way); `out_length` (host-computed, >= every sample's
        spliced length) overrides it, e.g. for mixed image/text batches. `prompt_lengths` [B] (default: the valid lengths)
        marks which rows are prompt, and `salient_mask` [B, L] the salient question
        tokens, both in input_ids coordinates.
        """
        cfg = self.config
        b, length = input_ids.shape
        k = feats.shape[1]
        n_ids = cfg.image_seq_length
        valid_in = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
        labels = jnp.full((b, length), IGNORE_INDEX, jnp.int32) if labels is None else labels.astype(jnp.int32)
        is_img = (input_ids == cfg.image_token_index) & valid_in
        has_image = is_img.any(axis=1)
        start = jnp.where(has_image, jnp.argmax(is_img, axis=1), 0).astype(jnp.int32)
        out_len = length - (n_ids - k) if images_in_every_sample else length
        out_len = out_len if out_length is None else out_length
        j = jnp.arange(out_len)[None, :]
        st = start[:, None]
        src = jnp.where(j < st, j, jnp.where(j < st + k, length + j - st, j + (n_ids - k)))
        src = jnp.where(has_image[:, None], src, j)
        new_len = valid_in.sum(1) - jnp.where(has_image, n_ids - k, 0)
        valid = j < new_len[:, None]
        src = jnp.where(valid, src, 0)
        text = self.text.embed(params["text"], input_ids)
        pool = jnp.concatenate([text, feats.astype(self.dtype)], axis=1)
        hidden = jnp.take_along_axis(pool, src[..., None], axis=1)
        hidden = jnp.where(valid[..., None], hidden, 0)
        lab_pool = jnp.concatenate([labels, jnp.full((b, k), IGNORE_INDEX, jnp.int32)], axis=1)
        labels = jnp.where(valid, jnp.take_along_axis(lab_pool, src, axis=1), IGNORE_INDEX)
        positions = jnp.where(valid, j, 0).astype(jnp.int32)
        prompt_len = valid_in.sum(1) if prompt_lengths is None else prompt_lengths
        prompt = valid & (j < (prompt_len - jnp.where(has_image, n_ids - k, 0))[:, None])
        if salient_mask is None:
            salient = jnp.zeros((b, out_len), bool)
        else:
            sal_pool = jnp.concatenate([salient_mask.astype(bool), jnp.zeros((b, k), bool)], axis=1)
            salient = valid & jnp.take_along_axis(sal_pool, src, axis=1)
        return Sequence(hidden, valid, positions, labels, start, has_image, prompt, salient)

    def check_inputs(self, input_ids, pixel_values) -> None:
        """Host-side shape checks with messages that say how to fix the input."""
        cfg = self.config
        n_img = np.asarray(jax.device_get(input_ids == cfg.image_token_index)).sum(1)
        bad = [i for i, n in enumerate(n_img) if n not in (0, cfg.image_seq_length)]
        if bad:
            raise ValueError(
                f"sample(s) {bad[:3]} have {int(n_img[bad[0]])} image tokens; each image must occupy "
                f"exactly image_seq_length={cfg.image_seq_length} consecutive ids "
                f"{cfg.image_token_index} (build prompts with duet_jax.data / LlavaProcessor)")
        if pixel_values is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"pixel_values has batch {pixel_values.shape[0]} but input_ids has "
                             f"{input_ids.shape[0]}; pass one image per sample")

    def apply(self, params: dict, input_ids: jax.Array, pixel_values: jax.Array,
              attention_mask: Optional[jax.Array] = None, labels: Optional[jax.Array] = None,
              reduction=None, images_in_every_sample: bool = True, *, train: bool = False,
              prompt_lengths: Optional[jax.Array] = None, salient_mask=None, segment_lengths=None,
              splice_length: Optional[int] = None, zoo_inputs=None):
        """Logits [B, L', V] float32 and the final `Sequence` (labels/valid after any drops).

        `reduction` is a `duet_jax.reduction.ReductionConfig` (static) or None,
        which is exactly the unreduced LLaVA forward (L' = L). `train` selects the
        training query sets (from labels) for Stage 2. `zoo_inputs`: per-sample inputs
        a zoo method reads (CDPruner's question embeddings, `duet_jax.models.zoo`).
        """
        out = self.forward(params, input_ids, pixel_values, attention_mask, labels, reduction,
                           images_in_every_sample, train=train, prompt_lengths=prompt_lengths,
                           salient_mask=salient_mask, segment_lengths=segment_lengths,
                           splice_length=splice_length, zoo_inputs=zoo_inputs)
        return self.text.head(params["text"], out.sequence.hidden), out.sequence

    def forward(self, params: dict, input_ids, pixel_values, attention_mask=None, labels=None,
                reduction=None, images_in_every_sample: bool = True, *, train: bool = False,
                prompt_lengths=None, salient_mask=None, segment_lengths=None,
                return_kv: bool = False, splice_length: Optional[int] = None,
                zoo_inputs=None) -> "Forward":
        """Everything up to the final norm: final sequence, per-segment state, selections.

        `pixel_values` None: a batch whose input_ids hold no image token (the caller knows it
        on the host, e.g. training's text-only steps); no tower runs and nothing is reduced.
        """
        reduction = None if pixel_values is None else reduction   # no image token to drop
        stage1 = reduction.stage1 if reduction is not None else None
        stage2 = reduction.stage2 if reduction is not None else None
        select = reduction.select if reduction is not None else None
        if pixel_values is None:   # text only (a training step without images): no tower
            feats = ImageFeatures(jnp.zeros((input_ids.shape[0], 0, self.config.text.hidden_size),
                                            self.dtype), None)
        elif select is None:
            feats = self.image_features(params, pixel_values, stage1)
        else:   # a zoo method at the LM input replaces Stage 1 (docs/BASELINES.md §9)
            feats = ImageFeatures(*select_image_tokens(self, params, pixel_values, select,
                                                         zoo_inputs))
        seq = self.splice(params, input_ids, feats.tokens, attention_mask, labels,
                          images_in_every_sample, prompt_lengths, salient_mask, splice_length)
        seq, segments, kept = run_language_model(
            self.text, params["text"], seq, feats.tokens.shape[1], stage2,
            images_in_every_sample=images_in_every_sample, train=train,
            segment_lengths=segment_lengths, return_kv=return_kv)
        return Forward(seq, tuple(segments), tuple(kept), feats)


def prefixed(prefix: str, table: dict) -> dict:
    """A part's `PARAM_AXES` table under its key in an assembly's params."""
    return {(prefix,) + path: axes for path, axes in table.items()}


# Logical axes of every LLaVA-1.5 param (`duet_jax.sharding`): the tower's and the LM's
# tables, and the projector, a column/row pair (linear_1 splits its output, linear_2 its input).
PARAM_AXES = {
    **prefixed("vision", CLIP_PARAM_AXES),
    **prefixed("text", LLAMA_PARAM_AXES),
    ("projector", "linear_1", "kernel"): ("embed", "mlp"),
    ("projector", "linear_1", "bias"): ("mlp",),
    ("projector", "linear_2", "kernel"): ("mlp", "embed"),
    ("projector", "linear_2", "bias"): (None,),
}
