"""The PyTorch way of generating with a reduced LLaVA: the drops applied in the prefill
(`bench.torch_peer.reduced_prefill`, HF modules writing an HF `DynamicCache`), then a
greedy KV-cached decode loop over the same HF decoder layers.

This is what the official DUET / PyramidDrop code does inside its patched HF
`generate`: the prefill drops image rows between layers, so every layer's cache holds
only the rows that layer saw, and decode step t of a layer whose segment was renumbered
sits at RoPE position (segment length + t) (docs/ALGORITHM.md §3.5-3.6). The loop is
`generate`'s greedy loop without its logits processors and stopping criteria (EOS is
off in the benchmark), so the peer pays no more Python per token than `generate` does.
"""
from __future__ import annotations

import torch

from bench.torch_peer import cache_kwarg, reduced_prefill


@torch.no_grad()
def greedy_generate(hf, input_ids, pixel_values, reduction, image_start: int,
                    new_tokens: int) -> torch.Tensor:
    """[B, new_tokens] greedy tokens (argmax, first index on ties, no EOS stop)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    logits = reduced_prefill(hf, input_ids, pixel_values, reduction, image_start, cache=cache)
    token = logits.argmax(-1)
    out = [token]
    lm = hf.model.language_model
    kw = {cache_kwarg(lm.layers[0]): cache, "use_cache": True}
    distinct = sorted(set(cache.decode_base))
    for step in range(1, new_tokens):
        h = lm.embed_tokens(token[:, None])
        # one RoPE table per distinct segment base, shared by that segment's layers
        rope = {base: lm.rotary_emb(h, torch.full((h.shape[0], 1), base + step - 1,
                                                  device=h.device)) for base in distinct}
        for layer, base in zip(lm.layers, cache.decode_base):
            h = layer(h, attention_mask=None, position_embeddings=rope[base], **kw)
        token = hf.lm_head(lm.norm(h[:, -1])).argmax(-1)
        out.append(token)
    return torch.stack(out, 1)
