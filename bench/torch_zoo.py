"""The PyTorch way of the method zoo (docs/BASELINES.md §1-§3, §5, §7, §9): each method's
selection math written in torch the way its official repository writes it, plugged into
the HF-module prefill of `bench.torch_peer.reduced_forward`.

Where each runs is where the JAX forward runs it (docs/BASELINES.md §9): DivPrune,
random and pool on the projector outputs; VisPruner on the feature layer's patches and
CLS attention before the projector; VScan stage 1 on the CLS attention of CLIP layers
5 and -2 with the merge in projector space (its stage 2 is the peer's ordinary drop);
DART before LM layer K from layer K-1's post-RoPE keys and output through the final
norm, positions kept. The CLS attentions are those layers' CLS-query rows only
(`torch_peer.clip_tower`), not the full `output_attentions=True` maps the official
towers return: the same values without 24 eager [T, T] maps.

Batching: VisPruner, VScan, random and pool are batched over samples as upstream
(VisPruner's `features[torch.arange(B), idx]` gather written with `arange(B)[:, None]`,
which is what it means for B > 1); DivPrune and DART are batch-1 upstream
(`new_input_embeds[0]`, `any_states[0]`), so the peer loops over samples with the
official per-sample code, DART's pivot visiting order from a real CPython `set`. VScan's
merge takes its cosines from one matmul of unit rows instead of the official broadcast
`F.cosine_similarity` (same values, without its [B, N-K, K, D] temporary).
VisPruner's diversity rounds are chaotic in rounding (docs/BASELINES.md §3): in float32
torch's and XLA's matmuls round differently enough that at 576 patches the two keep
different sets on some images (the bench's `max |dlogit|` shows it), while in float64
they keep the same ones (tests/bench/test_zoo_peer.py).
CDPruner is not here: it needs the question's CLIP text embeddings (a CLIP text tower
and tokenizer), which neither side of the prefill bench builds.
"""
from __future__ import annotations

import math

import jax
import numpy as np
import torch
import torch.nn.functional as F

from bench.torch_peer import _vision_features, clip_tower, reduced_prefill, rope_qk
from duet_jax.reduction import DART_PIVOTS, dart_topk, random_select, zoo_method
from duet_jax.reduction.vscan import LOCAL_RATIO, WINDOW

VISPRUNER_DROP = 8     # VisPruner's `min(8, R - T_div)` tokens a round


def take_rows(x, keep):
    """x [B, N, D], keep [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))


def divprune_keep(features, k: int):
    """DivPrune (docs/BASELINES.md §1) of one image's rows [N, D]: [k] kept, ascending.
    The official loop: first the row whose second-smallest distance (1 - cos) is largest,
    then the row farthest (max over min) from the picks so far, argmax first."""
    unit = features / features.norm(dim=1, keepdim=True)
    dist = 1.0 - torch.mm(unit, unit.t())
    picks = torch.empty(k, dtype=torch.long, device=features.device)
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(torch.index_select(dist, 0, picks[:i]), dim=0).values
        picks[i] = torch.argmax(scores)
    return torch.sort(picks).values


def vispruner_keep(features, cls_attn, T: int, important_ratio: float):
    """VisPruner (docs/BASELINES.md §3): features [B, N, C] of the feature layer, its
    CLS attention [B, H, N] -> [B, T] kept patches, ascending (the official
    `encode_images` loop)."""
    unit = features / features.norm(dim=-1, keepdim=True)
    b = features.shape[0]
    important_num = int(T * important_ratio)
    diverse_num = T - important_num
    order = cls_attn.mean(dim=1).argsort(dim=-1, descending=True)
    important, residual = order[:, :important_num], order[:, important_num:]
    batch = torch.arange(b, device=features.device)[:, None]
    while True:
        tokens = unit[batch, residual]                                      # [B, R, C]
        r = min(VISPRUNER_DROP, tokens.shape[1] - diverse_num)
        if r <= 0:
            break
        scores = (tokens[:, ::2] @ tokens[:, 1::2].transpose(-1, -2)).max(dim=-1).values
        distinct = scores.argsort(dim=-1, descending=True)[:, r:]
        residual = torch.cat([residual[:, ::2][batch, distinct], residual[:, 1::2]], dim=-1)
    return torch.sort(torch.cat([important, residual], dim=-1)).values


def vscan_tokens(shallow_attn, deep_attn, projected, T: int):
    """VScan stage 1 (docs/BASELINES.md §5): CLS attention [B, H, N] of CLIP layers
    `select.shallow_layer` (5) and -2, projector outputs [B, N, D] -> the merged kept
    rows [B, K, D] (ascending)."""
    b, n, d = projected.shape
    if T == n:                    # upstream returns the tower output untouched
        return projected
    shallow, deep = shallow_attn.mean(dim=1), deep_attn.mean(dim=1).clone()
    side = math.isqrt(n)
    grid = side // WINDOW
    local_num = int(T * LOCAL_RATIO)
    per_window = local_num // grid ** 2
    attn_map = shallow.view(b, side, side)
    local = []
    for i in range(grid):                       # windows row-major, as upstream
        for j in range(grid):
            window = attn_map[:, i * WINDOW:(i + 1) * WINDOW, j * WINDOW:(j + 1) * WINDOW]
            top = torch.topk(window.reshape(b, -1), per_window).indices
            local.append((i * WINDOW + top // WINDOW) * side + j * WINDOW + top % WINDOW)
    local = torch.cat(local, dim=1)
    deep.scatter_(1, local, 0.0)
    glob = torch.topk(deep, T - local_num, dim=1).indices
    retained = torch.zeros(b, n, dtype=torch.bool, device=projected.device).scatter_(
        1, torch.cat([local, glob], 1), True)
    return _merge_into_retained(projected, retained)


def _merge_into_retained(features, retained):
    """VScan's `token_merging` (scaling 1): every dropped row of features [B, N, D]
    joins its most cosine-similar retained row; each retained row becomes the mean of
    itself and its joiners. retained [B, N] bool, one count per sample -> [B, K, D]."""
    b, _, d = features.shape
    kept = torch.stack([features[i][retained[i]] for i in range(b)])        # [B, K, D]
    dropped = torch.stack([features[i][~retained[i]] for i in range(b)])   # [B, N-K, D]
    unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    nearest = (unit(dropped) @ unit(kept).transpose(1, 2)).argmax(dim=2)   # [B, N-K]
    merged = kept.clone().scatter_add_(1, nearest[..., None].expand(-1, -1, d), dropped)
    count = torch.zeros(kept.shape[:2], dtype=torch.int, device=kept.device).scatter_add_(
        1, nearest, torch.ones_like(nearest, dtype=torch.int))
    return merged / (1 + count[..., None])


def pool_rows(projected, k: int):
    """The pool control (docs/BASELINES.md §7): [B, N, D] on the square grid ->
    [B, side^2, D] `adaptive_avg_pool2d` cells, side = floor(sqrt(k)), row-major."""
    b, n, d = projected.shape
    grid, side = math.isqrt(n), math.isqrt(k)
    cells = F.adaptive_avg_pool2d(projected.view(b, grid, grid, d).permute(0, 3, 1, 2), side)
    return cells.permute(0, 2, 3, 1).reshape(b, side * side, d)


def random_keep(batch: int, k: int, n: int, seed: int):
    """The random control (docs/BASELINES.md §7) has no official torch code: its seeded
    draw is the JAX `random_select`'s, read back through NumPy, so both sides keep the
    same rows ([batch, k], ascending)."""
    keep = random_select(jax.random.key(seed), batch, k, n)["keep"]
    return torch.as_tensor(np.array(keep), dtype=torch.long)


def dart_keep(hidden, keys, image_start: int, n_image: int, n_keep: int):
    """DART (docs/BASELINES.md §2), the official `get_retained_image_token` per sample:
    hidden [B, L, D] (layer K-1's output through the final norm), keys [B, KV, L, hd]
    (layer K-1's, post-RoPE) -> [B, n_keep] kept image rows, ascending, as indices into
    the image block. Pivots are visited in the order of a real CPython `set`."""
    p_img, p_txt = DART_PIVOTS
    topk = dart_topk(n_keep)
    keys = keys.permute(0, 2, 1, 3).reshape(keys.shape[0], keys.shape[2], -1)   # [B, L, KV*hd]
    end = image_start + n_image
    out = []
    for b in range(hidden.shape[0]):
        image_l1 = torch.norm(keys[b, image_start:end], p=1, dim=-1)
        query_l1 = torch.norm(keys[b, end:], p=1, dim=-1)
        image_indices = (image_l1.topk(p_img).indices + image_start).tolist()
        query_indices = (query_l1.topk(p_txt).indices + end).tolist()
        indices_set = set(image_indices + query_indices)
        valid = set(range(image_start, end)) - set(image_indices)
        valid_list = list(valid)
        for item in list(indices_set):
            cos = -F.cosine_similarity(hidden[b, item], hidden[b, valid_list], dim=-1)
            picked = [valid_list[i] for i in cos.topk(topk).indices.tolist()]
            indices_set.update(picked)
            valid.difference_update(picked)
            valid_list = list(valid)
        indices_set.difference_update(query_indices)
        out.append(sorted(indices_set))
    return torch.tensor(out, dtype=torch.long, device=hidden.device) - image_start


class ZooPeer:
    """The PyTorch way of one zoo `ReductionConfig`, the hooks `reduced_forward` calls."""

    def __init__(self, reduction):
        self.select = reduction.select
        if self.select is not None and self.select.method == "cdpruner":
            raise ValueError(f"{reduction.name}: the PyTorch peer has no CDPruner (it needs "
                             "the question's CLIP text embeddings); use another preset")

    def image_tokens(self, hf, pixel_values, feature_layer: int):
        """pixel_values [B, 3, H, W] -> the image rows [B, K, Dt] entering the LM."""
        select, project = self.select, hf.model.multi_modal_projector
        n = hf.config.image_seq_length
        k = select.count(n)
        if select.method == "vispruner":
            out, probed = clip_tower(hf, pixel_values, feature_layer, (feature_layer,))
            feats = out[:, 1:]
            keep = vispruner_keep(feats, probed[feature_layer][0], k, select.important_ratio)
            return project(take_rows(feats, keep))
        if select.method == "vscan":
            deep, shallow = hf.config.vision_config.num_hidden_layers - 2, select.shallow_layer
            out, probed = clip_tower(hf, pixel_values, feature_layer, (shallow, deep))
            return vscan_tokens(probed[shallow][0], probed[deep][0], project(out[:, 1:]), k)
        projected = project(_vision_features(hf, pixel_values, None, feature_layer))
        if select.method == "pool":
            return pool_rows(projected, k)
        if select.method == "divprune":
            keep = torch.stack([divprune_keep(x, k) for x in projected])
        else:
            keep = random_keep(projected.shape[0], k, n, select.seed).to(projected.device)
        return take_rows(projected, keep)

    def kept_rows(self, hf, layer, h_in, h_out, rope, image_start: int, n_image: int,
                  n_keep: int):
        """DART at the boundary: layer K-1 (`layer`) with its input h_in and output h_out
        [B, L, D] -> [B, n_keep] kept image rows, ascending."""
        keys = rope_qk(layer, h_in, rope)[1]
        hidden = hf.model.language_model.norm(h_out)
        return dart_keep(hidden, keys, image_start, n_image, n_keep)


def zoo_peer(reduction):
    """A `ZooPeer` for a zoo `ReductionConfig` (a select section or DART), else None."""
    return ZooPeer(reduction) if reduction is not None and zoo_method(reduction) else None


def peer_prefill(hf, input_ids, pixel_values, reduction, image_start: int, cache=None):
    """`reduced_prefill` of any preset, zoo methods included: last-token logits [B, V]."""
    return reduced_prefill(hf, input_ids, pixel_values, reduction, image_start, cache,
                           zoo=zoo_peer(reduction))
