"""The CLIP text tower a LLaVA-1.5 handle carries for CDPruner (docs/BASELINES.md §4, §9).

Where it comes from: `load_llava(path, clip_text_tower=DIR)` (`eval.py run
--clip-text-tower DIR`), an HF `CLIPModel` directory such as
openai/clip-vit-large-patch14-336; without it, a `clip_text_tower/`
subdirectory of the LLaVA checkpoint holding one is picked up.

Per sample, the question (the user message without `<image>` and without the
single-word answer instruction) is tokenised by the CLIP directory's tokenizer
without truncation, zero-padded (ids and attention mask) to a multiple of 77 and
cut into segments of 77, as upstream does. `encode` stores the segments; a batch
pads every sample to its largest segment count `M` with a segment mask, so the
jitted tower and forward see static shapes `[B, M, 77]` and each sample's mean
runs over its own segments only (`cdpruner_relevance`'s `text_mask`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.clip_text import CLIPTextTower

ANSWER_HINT = "\nAnswer the question using a single word or phrase."
SUBDIR = "clip_text_tower"       # auto-detected inside a LLaVA checkpoint directory
BATCH_KEYS = ("clip_text_ids", "clip_text_mask", "clip_segments")


@functools.partial(jax.jit, static_argnames=("tower",))
def _text_embeds(tower, params, ids, mask):
    b, m, t = ids.shape
    return tower.apply(params, ids.reshape(b * m, t), mask.reshape(b * m, t)).reshape(b, m, -1)


@dataclasses.dataclass(frozen=True)
class ClipTextTower:
    """Tower + params (`clip_text`) + its directory (the tokenizer's)."""
    tower: CLIPTextTower
    params: dict
    path: str

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(self.path)

    @staticmethod
    def question(message: str) -> str:
        """The text CDPruner embeds: the user message without `<image>` and the hint."""
        return message.replace("<image>\n", "").replace("<image>", "").replace(ANSWER_HINT, "")

    def segments(self, messages: Sequence[str]) -> dict:
        """Messages -> `clip_text_ids`, `clip_text_mask` [B, M, 77] int32 and
        `clip_segments` [B, M] bool (False: padding segment of a shorter question)."""
        t = self.tower.config.max_position_embeddings
        rows = []
        for message in messages:
            enc = self.tokenizer(self.question(message), truncation=False, verbose=False)
            ids = np.asarray(enc["input_ids"], np.int32)
            m = -(-len(ids) // t)
            pad = m * t - len(ids)
            mask = np.concatenate([np.ones(len(ids), np.int32), np.zeros(pad, np.int32)])
            rows.append((np.pad(ids, (0, pad)).reshape(m, t), mask.reshape(m, t)))
        most = max(ids.shape[0] for ids, _ in rows)
        out_ids = np.zeros((len(rows), most, t), np.int32)
        out_mask = np.zeros((len(rows), most, t), np.int32)
        out_mask[:, :, 0] = 1      # padding segments attend to one token: finite, then masked
        seg = np.zeros((len(rows), most), bool)
        for b, (ids, mask) in enumerate(rows):
            out_ids[b, :len(ids)], out_mask[b, :len(ids)], seg[b, :len(ids)] = ids, mask, True
        return {"clip_text_ids": out_ids, "clip_text_mask": out_mask, "clip_segments": seg}

    def zoo_inputs(self, batch: dict) -> dict:
        """An encoded batch -> `{"text_embeds": [B, M, P] float32, "text_mask": [B, M]}`."""
        embeds = _text_embeds(self.tower, self.params, jnp.asarray(batch["clip_text_ids"]),
                              jnp.asarray(batch["clip_text_mask"]))
        return {"text_embeds": embeds, "text_mask": jnp.asarray(batch["clip_segments"])}


def find_clip_text_tower(path: str, named: Optional[str]) -> Optional[str]:
    """The CLIP dir to read: `named`, else `path/clip_text_tower` if it holds a CLIPModel."""
    from duet_jax.checkpoints.clip_text import is_clip_text_dir
    if named is not None:
        return named
    auto = os.path.join(path, SUBDIR)
    return auto if is_clip_text_dir(auto) else None


def load_clip_text_tower(directory: str, vision_hidden: int, mesh=None):
    """-> (ClipTextTower, {"kernel"} visual projection) in float32 (the tower runs once
    per question; upstream casts its inputs to float); replicated on `mesh` if given."""
    from duet_jax.checkpoints.clip_text import load_clip_text
    cfg, params = load_clip_text(directory, vision_hidden, dtype=jnp.float32)
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    return (ClipTextTower(CLIPTextTower(cfg), params["clip_text"], directory),
            params["clip_projection"])
