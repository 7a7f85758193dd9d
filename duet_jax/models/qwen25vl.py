"""Qwen2.5-VL assembly (HF `Qwen2_5_VLForConditionalGeneration`, images only).

Vision tower (`qwen_vision`) -> merged LLM-space tokens scattered into the
image placeholders -> Qwen2 LM with M-RoPE (`qwen2`). Image grids are static
(host-known) and M-RoPE ids are computed on the host from the prompt
(`rope_index`, HF `get_rope_index`), so one compile serves one (grids, length)
bucket. The DUET stages live in `qwen25vl_reduced`.

Params: {"vision": qwen_vision layout, "text": Llama layout with q/k/v biases}.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.config import TextConfig, _pick
from duet_jax.models.qwen2 import PARAM_AXES as TEXT_PARAM_AXES, Qwen2Model
from duet_jax.models.qwen_vision import (PARAM_AXES as VISION_PARAM_AXES, QwenVisionConfig,
                                        check_grids, vision_forward)


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    vision: QwenVisionConfig = QwenVisionConfig()
    text: TextConfig = TextConfig()
    mrope_section: tuple = (16, 24, 24)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "Qwen25VLConfig":
        if d.get("model_type") != "qwen2_5_vl":
            raise ValueError(f"model_type {d.get('model_type')!r} is not 'qwen2_5_vl'; "
                             "pass a Qwen2.5-VL checkpoint")
        text = dict(d.get("text_config") or {})
        rp = text.get("rope_parameters") or text.get("rope_scaling") or {}
        section = tuple(rp.get("mrope_section", (16, 24, 24)))
        text["rope_parameters"] = {k: v for k, v in rp.items() if k != "mrope_section"}
        if text["rope_parameters"].get("rope_type") == "mrope":
            text["rope_parameters"]["rope_type"] = "default"
        text.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
        top = {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}
        return _pick(top, cls, vision=QwenVisionConfig.from_hf(d.get("vision_config") or {}),
                     text=TextConfig.from_hf(text), mrope_section=section)

    def to_hf(self) -> dict:
        t = self.text
        text = dict(model_type="qwen2_5_vl_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                    intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                    num_attention_heads=t.num_attention_heads,
                    num_key_value_heads=t.num_key_value_heads, hidden_act=t.hidden_act,
                    max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
                    rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                     "mrope_section": list(self.mrope_section)},
                    bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                    pad_token_id=t.pad_token_id, tie_word_embeddings=t.tie_word_embeddings)
        return dict(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
                    vision_config=self.vision.to_hf(), text_config=text,
                    image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                    vision_start_token_id=self.vision_start_token_id,
                    vision_end_token_id=self.vision_end_token_id,
                    tie_word_embeddings=t.tie_word_embeddings)


def rope_index(cfg: Qwen25VLConfig, input_ids, grids, attention_mask=None):
    """Host-side M-RoPE ids (HF `get_rope_index`, images only).

    input_ids [B, L] (NumPy), grids: one (t, h, w) per image block, in prompt order
    over the batch. Returns (positions [3, B, L] int32 (0 on padding),
    next_position [B] int32: the id of the first generated token).
    """
    ids = np.asarray(input_ids)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    grids = list(check_grids(cfg.vision, grids)) if len(grids) else []
    m = cfg.vision.spatial_merge_size
    out = np.zeros((3,) + ids.shape, np.int64)
    nxt = np.zeros(ids.shape[0], np.int64)
    for b in range(ids.shape[0]):
        row = ids[b][mask[b]]
        is_img = row == cfg.image_token_id
        pos, cur, i = [], 0, 0
        while i < len(row):
            j = i
            while j < len(row) and is_img[j] == is_img[i]:
                j += 1
            if not is_img[i]:
                pos.append(np.broadcast_to(np.arange(j - i) + cur, (3, j - i)))
                cur += j - i
            else:
                if not grids:
                    raise ValueError("the prompt has more image blocks than image grids; pass "
                                     "one (t, h, w) per image")
                t, h, w = grids.pop(0)
                gt, gh, gw = np.meshgrid(np.arange(t), np.arange(h // m), np.arange(w // m), indexing="ij")
                block = np.stack([gt, gh, gw]).reshape(3, -1) + cur
                if block.shape[1] != j - i:
                    raise ValueError(f"an image block has {j - i} placeholder tokens but its grid "
                                     f"({t}, {h}, {w}) gives {block.shape[1]}; re-run the processor")
                pos.append(block)
                cur += max(h, w) // m
            i = j
        full = np.concatenate(pos, axis=1) if pos else np.zeros((3, 0), np.int64)
        out[:, b, mask[b]] = full
        nxt[b] = (full.max() + 1) if full.size else 0
    if grids:
        raise ValueError(f"{len(grids)} image grid(s) left over: the prompt has fewer image "
                         "blocks than grids")
    return out.astype(np.int32), nxt.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Qwen25VLModel:
    """Pure model: `apply(params, input_ids, pixel_values, grids, positions, mask)`."""
    config: Qwen25VLConfig
    dtype: jnp.dtype = jnp.float32

    @property
    def text(self) -> Qwen2Model:
        return Qwen2Model(self.config.text, self.dtype, mrope_section=self.config.mrope_section)

    def image_embeds(self, params, pixel_values, grids: tuple):
        """[N, patch_dim] -> [N/4, D_text] merged tokens in HF order."""
        return vision_forward(self.config.vision, params["vision"], pixel_values, grids,
                              self.dtype).embeds

    def embed(self, params, input_ids, image_embeds):
        """Scatter image_embeds [B*n, D] (prompt order) into the placeholder rows: [B, L, D]."""
        h = self.text.embed(params["text"], input_ids)
        if image_embeds is None:
            return h
        is_img = (input_ids == self.config.image_token_id).reshape(-1)
        # k-th placeholder row (row-major over the batch) takes image row k
        slot = jnp.clip(jnp.cumsum(is_img) - 1, 0, image_embeds.shape[0] - 1)
        rows = image_embeds.astype(h.dtype)[slot].reshape(h.shape)
        return jnp.where(is_img.reshape(input_ids.shape)[..., None], rows, h)

    def apply(self, params, input_ids, pixel_values, grids: tuple, positions,
              attention_mask: Optional[jax.Array] = None):
        """Unreduced logits [B, L, V] float32. positions [3, B, L] from `rope_index`."""
        emb = None if pixel_values is None else self.image_embeds(params, pixel_values, grids)
        h = self.embed(params, input_ids, emb)
        valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None
                 else attention_mask.astype(bool))
        text = self.text
        h, _ = text.run_layers(params["text"], h, positions, valid, 0,
                               self.config.text.num_hidden_layers)
        return text.head(params["text"], h)


# Logical axes (`duet_jax.sharding`): the vision tower's table (patch merger included,
# see `duet_jax.models.qwen_vision`) and the Qwen2 LM's (q/k/v biases included).
PARAM_AXES = {**{("vision",) + k: v for k, v in VISION_PARAM_AXES.items()},
              **{("text",) + k: v for k, v in TEXT_PARAM_AXES.items()}}
