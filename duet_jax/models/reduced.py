"""The Llama stack with Stage-2 drops between static segments.

Segment s runs layers `[l_s, l_{s+1})` on a sequence whose length is static
(ALGORITHM.md §3.6); between segments the image tokens are ranked with the
next layer's q/k and the sequence is gathered into a shorter buffer, carrying
labels, validity and positions along (§3.4), so prefill and training share it.
"""
from __future__ import annotations

from duet_jax.models.llama import LlamaModel


def run_language_model(text: LlamaModel, params: dict, seq, num_image: int, stage2,
                       images_in_every_sample: bool = True):
    """Runs every decoder layer; returns the final `Sequence` (hidden before the final norm)."""
    num_layers = text.config.num_hidden_layers
    if stage2 is None:
        h, _ = text.run_layers(params, seq.hidden, seq.positions, seq.valid, 0, num_layers)
        return seq._replace(hidden=h)
    raise NotImplementedError("stage 2 wiring lands with the reduction library")
