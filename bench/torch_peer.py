"""The PyTorch way of running a reduced LLaVA prefill: HF modules layer by layer, with
the Stage-1 merge and the Stage-2 / FastV drops done as torch gathers between layers
(the zoo methods' selections plug in through `bench.torch_zoo`).

This is the peer the prefill benchmark times beside the JAX model: same weights,
same presets, the official semantics (docs/ALGORITHM.md §2-3, §5). It serves batches
whose samples share one image position and length (the benchmark's prompts), which
is all the official code supports as well (batch 1 at evaluation).
"""
from __future__ import annotations

import inspect

import torch

from duet_jax.reduction import zoo_method
from duet_jax.reduction.stage1 import _duet_slots, _visionzip_slots


def _cls_attention(layer, h):
    """CLIP `layer`'s CLS-query softmax attention (its own q/k on its input h [B, T, Dv]),
    per head, onto the patches, and its raw keys: ([B, H, T-1], [B, H, T, hd])."""
    attn = layer.self_attn
    x = layer.layer_norm1(h)
    b, t, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q_cls = attn.q_proj(x[:, :1]).view(b, 1, heads, hd).transpose(1, 2)
    keys = attn.k_proj(x).view(b, t, heads, hd).transpose(1, 2)            # [B, H, T, hd]
    return torch.softmax((q_cls * attn.scale) @ keys.transpose(-1, -2), -1)[:, :, 0, 1:], keys


def clip_tower(hf, pixels, feature_layer: int, probes=()):
    """CLIP through `feature_layer` (0-based): (its output [B, T, Dv], CLS first,
    {layer: `_cls_attention` of that layer} for every layer in `probes`)."""
    tower = hf.model.vision_tower
    vm = getattr(tower, "vision_model", tower)      # transformers 5 flattened CLIPVisionModel
    h = vm.pre_layrnorm(vm.embeddings(pixels))
    probed = {}
    for index, layer in enumerate(vm.encoder.layers[:feature_layer + 1]):
        if index in probes:
            probed[index] = _cls_attention(layer, h)
        h = layer(h, None)
    return h, probed


def _vision_features(hf, pixels, stage1, feature_layer: int):
    """CLIP up to the feature layer; with Stage 1, its merge on that layer's output.
    Returns [B, K, Dv] (patch rows only when there is no Stage 1)."""
    if stage1 is None:
        return clip_tower(hf, pixels, feature_layer)[0][:, 1:]
    out, probed = clip_tower(hf, pixels, feature_layer, (feature_layer,))
    cls_attn, keys = probed[feature_layer]
    return _merge(cls_attn, out, keys.mean(1), stage1)


def _merge(cls_attn, hidden, metric, stage1):
    """Stage 1 (docs/ALGORITHM.md §2.2-2.4), modes duet / visionzip."""
    b, _, n = cls_attn.shape
    d = stage1.dominant - 1
    m = n - d
    scores = cls_attn.sum(1)                                                # [B, N]
    dom = torch.sort(torch.topk(scores, d, dim=-1).indices, -1).values
    is_dom = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, dom, True)
    if stage1.mode == "duet":
        pool_size, anchors, members = _duet_slots(m, stage1.contextual, stage1.width)
        pool = torch.topk(scores.masked_fill(is_dom, -1.0), pool_size, dim=-1).indices
    else:
        anchors, members = _visionzip_slots(m, stage1.contextual)
        pool = torch.argsort(is_dom.to(torch.int8), dim=-1, stable=True)[:, :m]
    slots = lambda idx: torch.as_tensor(idx, dtype=torch.long, device=pool.device)
    anchor_pos = pool[:, slots(anchors)] + 1
    member_pos = pool[:, slots(members)] + 1
    take = lambda x, idx: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    unit = metric / metric.norm(dim=-1, keepdim=True)
    sim = take(unit, member_pos) @ take(unit, anchor_pos).transpose(1, 2)  # [B, members, C]
    onehot = torch.nn.functional.one_hot(sim.argmax(-1), anchor_pos.shape[1]).to(hidden.dtype)
    merged = onehot.transpose(1, 2) @ take(hidden, member_pos)
    merged = merged / onehot.sum(1)[..., None].clamp(min=1.0)
    dom_pos = torch.cat([torch.zeros_like(dom[:, :1]), dom + 1], 1)
    return torch.cat([take(hidden, dom_pos), take(hidden, anchor_pos) + merged], 1)


def rope_qk(layer, h, rope):
    """An HF decoder layer's queries [B, H, L, hd] and keys [B, KV, L, hd] on its input
    h [B, L, D], after RoPE (`rope`: the (cos, sin) of the rows' positions)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    return apply_rotary_pos_emb(q, k, *rope)


def _image_attention(layer, h, rope, image_start: int, n_image: int, query_rows: slice):
    """Mean over heads and `query_rows` of `layer`'s causal softmax attention (its own
    q/k on input h, float32) onto the image columns: [B, n_image]."""
    q, k = rope_qk(layer, h, rope)
    t = h.shape[1]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    rows = torch.arange(t, device=h.device)[query_rows]
    logits = (q[:, :, rows] @ k.transpose(-1, -2)) * layer.self_attn.scaling
    causal = torch.arange(t, device=h.device)[None, :] <= rows[:, None]
    probs = torch.softmax(logits.float().masked_fill(~causal, float("-inf")), -1)
    return probs[..., image_start:image_start + n_image].mean(dim=(1, 2))


def _drop_index(h, kept, image_start: int, n_image: int):
    """[B, L'] rows of h [B, L, D] that stay: the `kept` image rows [B, k] (indices into
    the image block, ascending) of every sample, and every text row."""
    t = h.shape[1]
    prefix = torch.arange(image_start, device=h.device).expand(h.shape[0], -1)
    suffix = torch.arange(image_start + n_image, t, device=h.device).expand(h.shape[0], -1)
    return torch.cat([prefix, kept + image_start, suffix], 1)


def cache_kwarg(layer) -> str:
    """The name an HF decoder layer takes its KV cache under (`cache` from transformers
    5.24 on, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _arange_rows(h):
    """[B, L] row numbers 0..L-1 of h [B, L, D]."""
    return torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)


@torch.no_grad()
def reduced_prefill(hf, input_ids, pixel_values, reduction, image_start: int, cache=None,
                    zoo=None):
    """Last-token logits [B, V] of the (reduced) LLaVA prefill.

    input_ids [B, L] carry `image_seq_length` image ids at `image_start` in every
    sample, no padding; `reduction` is a `ReductionConfig` or None; `zoo`: see
    `reduced_forward`. With an HF `cache` (e.g. `DynamicCache()`), every layer writes
    its keys/values there, and `cache.decode_base` gets each layer's RoPE position of
    decode step 0 (its segment's length when positions are renumbered, else the
    unreduced length).
    """
    h, _, bases = reduced_forward(hf, input_ids, pixel_values, reduction, image_start, cache,
                                  zoo=zoo)
    if cache is not None:
        cache.decode_base = bases
    return hf.lm_head(hf.model.language_model.norm(h[:, -1]))


def reduced_forward(hf, input_ids, pixel_values, reduction, image_start: int, cache=None,
                    train_queries: int = 0, zoo=None):
    """The (reduced) LM forward up to the final norm: (hidden [B, L', D], rows [B, L']:
    each kept row's index in the spliced sequence, per-layer decode base positions).

    CLIP runs without gradients (frozen, as in the fine-tune recipe). `train_queries` > 0:
    Stage 2 ranks with the training query set `all` of a prompt whose `train_queries`
    question rows (label -100) follow the image block directly; else the inference rows
    (the last one, or all from the image block's end). `zoo`: the PyTorch way of a zoo
    method (`bench.torch_zoo.ZooPeer`), needed when `reduction` has a select section
    (its `image_tokens` replaces the tower and projector) or DART (its `kept_rows`
    chooses the image rows that stay at the boundary).
    """
    cfg = hf.config
    stage1 = reduction.stage1 if reduction is not None else None
    stage2 = reduction.stage2 if reduction is not None else None
    select = reduction.select if reduction is not None else None
    dart = stage2 is not None and stage2.method == "dart"
    if reduction is not None and zoo_method(reduction) and zoo is None:
        raise ValueError(f"{reduction.name} is a zoo method; pass zoo=bench.torch_zoo."
                         "ZooPeer(reduction) (or call bench.torch_zoo.peer_prefill)")
    feature_layer = cfg.vision_feature_layer % cfg.vision_config.num_hidden_layers
    if select is not None:
        with torch.no_grad():                      # a selection, as frozen as CLIP
            feats = zoo.image_tokens(hf, pixel_values, feature_layer)
    else:
        with torch.no_grad():
            vision = _vision_features(hf, pixel_values, stage1, feature_layer)
        feats = hf.model.multi_modal_projector(vision)
    lm = hf.model.language_model
    prefix = lm.embed_tokens(input_ids[:, :image_start])
    suffix = lm.embed_tokens(input_ids[:, image_start + cfg.image_seq_length:])
    h = torch.cat([prefix, feats.to(prefix.dtype), suffix], 1)
    n_image = feats.shape[1]
    positions = rows = _arange_rows(h)
    first_len = h.shape[1]
    layers, bases = lm.layers, []
    kw = {} if cache is None else {cache_kwarg(layers[0]): cache, "use_cache": True}
    run = lambda layer, h, rope: layer(h, attention_mask=None, position_embeddings=rope, **kw)
    counts, bounds = [n_image], [0, len(layers)]
    if stage2 is not None:
        counts = stage2.image_counts(n_image)
        bounds = [0, *stage2.layers, len(layers)]
    for s in range(len(bounds) - 1):
        rope = lm.rotary_emb(h, positions)
        # FastV ranks with the boundary's last layer on its input, DART reads that layer's
        # keys and output: both split it off
        split = stage2 is not None and stage2.method in ("fastv", "dart") and s == 0
        stop = bounds[s + 1] - 1 if split else bounds[s + 1]
        renumbered = stage2 is None or stage2.positions == "renumber"
        bases += [h.shape[1] if renumbered else first_len] * (bounds[s + 1] - bounds[s])
        for layer in layers[bounds[s]:stop]:
            h = run(layer, h, rope)
        if s == len(bounds) - 2 or counts[s] == 0:
            continue
        rank_layer, h_in = layers[stop], h
        if split:
            h = run(rank_layer, h, rope)
        with torch.no_grad():                      # ranking carries no gradient
            if dart:
                kept = zoo.kept_rows(hf, rank_layer, h_in, h, rope, image_start, counts[s],
                                     counts[s + 1])
            else:
                queries = (slice(-1, None) if stage2.queries == "last"
                           else slice(image_start + counts[s], None))
                if train_queries:
                    queries = slice(image_start + counts[s],
                                    image_start + counts[s] + train_queries)
                scores = _image_attention(rank_layer, h_in, rope, image_start, counts[s],
                                          queries)
                kept = torch.sort(torch.topk(scores, counts[s + 1], dim=-1).indices, -1).values
        index = _drop_index(h, kept, image_start, counts[s])
        h = torch.gather(h, 1, index[..., None].expand(-1, -1, h.shape[-1]))
        positions, rows = torch.gather(positions, 1, index), torch.gather(rows, 1, index)
        if stage2.positions == "renumber":
            positions = _arange_rows(h)
    return h, rows, bases
