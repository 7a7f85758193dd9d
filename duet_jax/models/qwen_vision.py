"""Qwen2.5-VL vision tower with the semantics of HF `Qwen2_5_VisionTransformerPretrainedModel`.

Patch embedding (a Conv3d whose kernel equals its stride, i.e. one linear map on
the processor's flattened `[C*Tp*p*p]` patches), 2-D axial RoPE, RMSNorm blocks
with SwiGLU MLPs, window attention in every block but `fullatt_block_indexes`,
and the 2x2 patch merger.

Dynamic resolution is bucketed to static shapes: the image grids `((t, h, w), ..)`
are host-known Python ints (`encode` snaps images to a bounded set of grids,
`duet_jax.data.resolution_buckets`), so the window permutation and every
attention pattern are NumPy constants built per grid (`grid_layout`) and the
tower compiles once per grid tuple. HF's variable-length attention over
`cu_seqlens` becomes, in window blocks, attention inside [W, S] blocks of the
window-permuted sequence (S = the largest window; O(N S), not O(N^2)) and, in
full blocks, query-blocked attention with a block-diagonal mask: token i may
attend to token j iff they belong to the same image/frame.

Params (kernels `[in, out]`; `layers` stacked on a leading `[depth]` axis):
    patch_embed/kernel [C*Tp*p*p, D]
    layers: norm1/scale [D], norm2/scale [D], attn/qkv/{kernel [D, 3D], bias [3D]},
            attn/proj/{kernel [D, D], bias [D]}, mlp/{gate_proj, up_proj}/{kernel [D, I], bias},
            mlp/down_proj/{kernel [I, D], bias}
    merger: ln_q/scale [D], mlp_0/{kernel [4D, 4D], bias}, mlp_2/{kernel [4D, Do], bias}
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from duet_jax.models.common import ACTIVATIONS, layer_at, run_stack, slice_layers
from duet_jax.models.config import _pick
from duet_jax.ops import apply_rope, rms_norm


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
    """HF `Qwen2_5_VLVisionConfig` fields (defaults: Qwen2.5-VL-7B)."""
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(self.fullatt_block_indexes))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size ** 2

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "QwenVisionConfig":
        d = dict(d)
        rp = d.get("rope_parameters") or {}
        d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
        d.setdefault("depth", d.get("num_hidden_layers", 32))
        d.setdefault("num_heads", d.get("num_attention_heads", 16))
        return _pick(d, cls)

    def to_hf(self) -> dict:
        d = dataclasses.asdict(self)
        d["fullatt_block_indexes"] = list(self.fullatt_block_indexes)
        d["rope_parameters"] = {"rope_type": "axial", "rope_theta": d.pop("rope_theta")}
        d["model_type"] = "qwen2_5_vl_vision"
        return d


class GridLayout(NamedTuple):
    """Host-side (NumPy) constants of one grid tuple; N = sum of t*h*w patches.

    window_index: [N/4] merge-group permutation (window order <- raster-block order).
    reverse_index: [N/4] its inverse (`argsort`).
    hw_positions:  [N, 2] (row, col) patch coordinates, block-major (HF order).
    window_segment: [N] window id of each token in window-permuted order.
    full_segment:   [N] image/frame id of each token in window-permuted order.
    merged_per_image: tuple of merged-token counts (t*h*w/4) per grid entry.
    """
    window_index: np.ndarray
    reverse_index: np.ndarray
    hw_positions: np.ndarray
    window_segment: np.ndarray
    full_segment: np.ndarray
    merged_per_image: tuple


def check_grids(cfg: QwenVisionConfig, grids) -> tuple:
    """Normalises `grids` to a tuple of (t, h, w) int tuples, with one-line errors."""
    try:
        grids = tuple(tuple(int(v) for v in g) for g in np.asarray(grids).reshape(-1, 3))
    except ValueError as e:
        raise ValueError(f"image grid {grids!r} is not a list of (t, h, w) triples") from e
    m = cfg.spatial_merge_size
    for t, h, w in grids:
        if t < 1 or h < m or w < m or h % m or w % m:
            raise ValueError(f"image grid (t={t}, h={h}, w={w}) does not fit the {m}x{m} merge; "
                             "use the processor's image_grid_thw")
    return grids


@functools.lru_cache(maxsize=64)
def grid_layout(cfg: QwenVisionConfig, grids: tuple) -> GridLayout:
    """Mirrors HF `get_vision_position_ids` / `get_vision_window_index` / cu_seqlens."""
    m, unit = cfg.spatial_merge_size, cfg.merge_unit
    win = cfg.window_size // m // cfg.patch_size
    pos, windows, seg_full, seg_win = [], [], [], []
    offset, frame_id, window_id = 0, 0, 0
    for t, h, w in grids:
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        pos.append(np.tile(np.stack([block(hh), block(ww)], -1), (t, 1)))
        gh, gw = h // m, w // m
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = win - gh % win, win - gw % win
        padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        nh, nw = (gh + ph) // win, (gw + pw) // win
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        for f in range(t):
            for cell in padded[f]:
                kept = cell[cell != -100]
                if kept.size:      # HF's unique_consecutive drops empty windows
                    windows.append(kept + offset)
                    seg_win.extend([window_id] * (kept.size * unit))
                    window_id += 1
            seg_full.extend([frame_id] * (gh * gw * unit))
            frame_id += 1
        offset += t * gh * gw
    window_index = np.concatenate(windows).astype(np.int32)
    # full-attention segments are frames in raster order; permuting whole merge groups
    # keeps frames contiguous only per image, so permute the frame ids like the tokens.
    seg_full = np.asarray(seg_full, np.int32).reshape(-1, unit)[window_index].reshape(-1)
    return GridLayout(window_index, np.argsort(window_index).astype(np.int32),
                      np.concatenate(pos).astype(np.int32), np.asarray(seg_win, np.int32),
                      seg_full, tuple(t * h * w // unit for t, h, w in grids))


def _linear(p, x):
    y = x @ p["kernel"].astype(x.dtype)
    return y + p["bias"].astype(x.dtype) if "bias" in p else y


def rope_cos_sin(cfg: QwenVisionConfig, hw_positions: np.ndarray):
    """2-D axial RoPE tables [N, hd] (float32) for (row, col) positions [N, 2]."""
    half = cfg.head_dim // 2
    inv = (1.0 / (cfg.rope_theta ** (np.arange(0, half, 2, dtype=np.float32) / half))).astype(np.float32)
    freqs = hw_positions[:, :, None].astype(np.float32) * inv          # [N, 2, hd/4]
    emb = np.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)           # [N, hd/2]
    emb = np.concatenate([emb, emb], axis=-1)
    return jnp.cos(jnp.asarray(emb)), jnp.sin(jnp.asarray(emb))


def attention_qkv(cfg: QwenVisionConfig, p, x, cos, sin):
    """Block input x [N, D] -> RoPE'd q, k and v, each [N, H, hd]."""
    n = x.shape[0]
    qkv = _linear(p["attn"]["qkv"], rms_norm(x, p["norm1"]["scale"], 1e-6))
    q, k, v = jnp.moveaxis(qkv.reshape(n, 3, cfg.num_heads, cfg.head_dim), 1, 0)
    # float32 rotation, cast back: HF's `apply_rotary_pos_emb_vision`
    return apply_rope(q, cos, sin, float32=True), apply_rope(k, cos, sin, float32=True), v


def attention_probs(q, k, allowed):
    """q [Nq, H, hd], k [Nk, H, hd], allowed [Nq, Nk] bool -> softmax probs [H, Nq, Nk] f32."""
    logits = jnp.einsum("qhd,khd->hqk", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    return jax.nn.softmax(jnp.where(allowed[None], logits, -jnp.inf), axis=-1)


def window_blocks(window_segment: np.ndarray):
    """Windows are contiguous in window-permuted order: (gather [W, S] token index per
    window slot (N = padding), valid [W, S], scatter [N] flat slot of each token)."""
    n = len(window_segment)
    _, starts, sizes = np.unique(window_segment, return_index=True, return_counts=True)
    slots = np.arange(sizes.max())[None]
    valid = slots < sizes[:, None]
    gather = np.where(valid, starts[:, None] + slots, n).astype(np.int32)
    scatter = window_segment * sizes.max() + (np.arange(n) - starts[window_segment])
    return gather, valid, scatter.astype(np.int32)


def window_attention(q, k, v, gather, valid, scatter, scale: float):
    """Attention inside windows as [W, S] blocks: O(N S) instead of the masked O(N^2).
    q, k, v [N, H, hd] -> [N, H, hd]; padded slots read a zero row and are masked out."""
    pad = lambda a: jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])  # noqa: E731
    qb, kb, vb = (pad(a)[gather] for a in (q, k, v))                               # [W, S, H, hd]
    out = jax.nn.dot_product_attention(qb, kb, vb, mask=jnp.asarray(valid)[:, None, None, :],
                                       scale=scale)
    return out.reshape((-1,) + out.shape[2:])[scatter]


def full_attention(q, k, v, segment, scale: float, query_block: int = 512):
    """Attention within each image/frame (`segment` [N] ids) in query blocks: the
    [H, N, N] logits of a large image never exist at once (3x faster on a CPU at
    N = 5120 than one masked product). q, k, v [N, H, hd] -> [N, H, hd]."""
    n = q.shape[0]
    blk = min(n, query_block)
    pad = -n % blk
    seg = jnp.asarray(segment)
    qb = jnp.pad(q, ((0, pad), (0, 0), (0, 0))).reshape((-1, blk) + q.shape[1:])
    sb = jnp.pad(seg, (0, pad), constant_values=-1).reshape(-1, blk)
    one = bool((np.asarray(segment) == np.asarray(segment)[0]).all())

    def attend(inputs):
        q_blk, s_blk = inputs
        mask = None if one else (s_blk[:, None] == seg[None, :])[None, None]
        return jax.nn.dot_product_attention(q_blk[None], k[None], v[None], mask=mask,
                                            scale=scale)[0]

    return jax.lax.map(attend, (qb, sb)).reshape((-1,) + q.shape[1:])[:n]


def block(cfg: QwenVisionConfig, p, x, cos, sin, attend):
    """One `Qwen2_5_VLVisionBlock`: x [N, D] -> [N, D]; `attend(q, k, v)` [N, H, hd]
    is its attention (windowed or full)."""
    q, k, v = attention_qkv(cfg, p, x, cos, sin)
    x = x + _linear(p["attn"]["proj"], attend(q, k, v).reshape(x.shape))
    h = rms_norm(x, p["norm2"]["scale"], 1e-6)
    act = ACTIVATIONS[cfg.hidden_act]
    mlp = p["mlp"]
    return x + _linear(mlp["down_proj"], act(_linear(mlp["gate_proj"], h)) * _linear(mlp["up_proj"], h))


class VisionOutput(NamedTuple):
    """embeds [N/4, Do] merged tokens in raster-block (HF) order; hidden [N, D] the last
    block's output, window-permuted; last_input [N, D] the last block's input (window-permuted)."""
    embeds: jax.Array
    hidden: jax.Array
    last_input: jax.Array


def vision_forward(cfg: QwenVisionConfig, params, pixel_values, grids: tuple, dtype=jnp.float32):
    """pixel_values [N, C*Tp*p*p] (processor order) -> VisionOutput. `grids` static."""
    lay = grid_layout(cfg, grids)
    n = pixel_values.shape[0]
    if n != lay.hw_positions.shape[0]:
        raise ValueError(f"pixel_values has {n} patches but the grids {grids} need "
                         f"{lay.hw_positions.shape[0]}; pass the processor's image_grid_thw")
    unit = cfg.merge_unit
    permute = lambda a: a.reshape(n // unit, unit, -1)[lay.window_index].reshape(n, -1)
    x = _linear(params["patch_embed"], pixel_values.astype(dtype))
    x = permute(x)
    cos, sin = rope_cos_sin(cfg, lay.hw_positions.reshape(n // unit, unit, 2)[lay.window_index].reshape(n, 2))
    scale = cfg.head_dim ** -0.5
    gather, valid, scatter = window_blocks(lay.window_segment)
    attend = {
        True: lambda q, k, v: full_attention(q, k, v, lay.full_segment, scale),
        False: lambda q, k, v: window_attention(q, k, v, gather, valid, scatter, scale)}
    body = {full: (lambda h, p, f=full: (block(cfg, p, h, cos, sin, attend[f]), None))
            for full in (True, False)}
    # Runs of window blocks scan; full blocks (static indices) sit between them. The
    # last block runs on its own: Stage 1 reads its input (scores and keys).
    last = cfg.depth - 1
    lo = 0
    while lo < last:
        full = lo in cfg.fullatt_block_indexes
        hi = lo + 1
        while hi < last and (hi in cfg.fullatt_block_indexes) == full:
            hi += 1
        x, _ = run_stack(body[full], x, slice_layers(params["layers"], lo, hi))
        lo = hi
    last_input = x
    x, _ = body[last in cfg.fullatt_block_indexes](x, layer_at(params["layers"], last))
    merged = rms_norm(x, params["merger"]["ln_q"]["scale"], 1e-6).reshape(n // unit, -1)
    merged = _linear(params["merger"]["mlp_2"],
                     jax.nn.gelu(_linear(params["merger"]["mlp_0"], merged), approximate=False))
    return VisionOutput(merged[lay.reverse_index], x, last_input)


def stage1_inputs(cfg: QwenVisionConfig, params, last_input, grids: tuple, query_block: int = 512):
    """Stage-1 scores and metric of ONE image from the last block's input (docs/ALGORITHM.md §2.6).

    Full attention of the last block (2-D RoPE applied) over the image's patches,
    whatever its window setting; score = column sum over queries of the head-mean
    attention, metric = RoPE'd keys averaged over heads; both averaged over each
    merge group and returned in merged-token (HF raster-block) order.
    last_input [N, D] window-permuted; query_block: static query rows per attention tile.
    Returns (scores [T] f32, metric [T, hd] f32).
    """
    from duet_jax.reduction.stage1_nocls import column_scores, group_mean
    lay = grid_layout(cfg, grids)
    if len(grids) != 1 or grids[0][0] != 1:
        raise ValueError(f"Stage 1 on Qwen2.5-VL takes one still image per prompt; got grids "
                         f"{grids}")
    n, unit = last_input.shape[0], cfg.merge_unit
    cos, sin = rope_cos_sin(cfg, lay.hw_positions.reshape(n // unit, unit, 2)[lay.window_index].reshape(n, 2))
    q, k, _ = attention_qkv(cfg, layer_at(params["layers"], cfg.depth - 1), last_input, cos, sin)
    # Column sums over query blocks: the [H, N, N] map of a large image never exists at once.
    block = min(n, query_block)
    pad = -n % block
    qb = jnp.pad(q, ((0, pad), (0, 0), (0, 0))).reshape(-1, block, *q.shape[1:])
    rows_ok = (jnp.arange(n + pad) < n).reshape(-1, block)

    def col_sum(total, inputs):
        q_blk, ok = inputs
        probs = attention_probs(q_blk, k, jnp.ones((block, n), bool))
        return total + column_scores(probs[None], ok[None])[0], None

    colsum, _ = jax.lax.scan(col_sum, jnp.zeros((n,), jnp.float32), (qb, rows_ok))
    scores = group_mean(colsum[None, :, None], unit)[0, :, 0]
    metric = group_mean(jnp.mean(k.astype(jnp.float32), axis=1)[None], unit)[0]
    return scores[lay.reverse_index], metric[lay.reverse_index]


# Logical axes of every vision-tower param (`duet_jax.sharding`), paths relative to the
# tower; `layers` leaves carry the leading stacked axis. proj/down_proj and the merger's
# mlp_2 split their input, gate/up and mlp_0 their output (Megatron's row/column pairs).
# The fused qkv output [3D] is laid out (q|k|v, heads, head_dim) (`attention_qkv`
# reshapes it to [N, 3, H, hd]): a contiguous tensor-parallel split of that axis does not
# give each device whole heads of q, k and v (with 2 devices the first holds all of q and
# half of k), so it is replicated on `tensor` explicitly; its input still shards on `fsdp`.
PARAM_AXES = {
    ("patch_embed", "kernel"): (None, "embed"),
    ("layers", "norm1", "scale"): ("layers", None),
    ("layers", "norm2", "scale"): ("layers", None),
    ("layers", "attn", "qkv", "kernel"): ("layers", "embed", None),
    ("layers", "attn", "qkv", "bias"): ("layers", None),
    ("layers", "attn", "proj", "kernel"): ("layers", "heads", "embed"),
    ("layers", "attn", "proj", "bias"): ("layers", None),
    ("layers", "mlp", "gate_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "gate_proj", "bias"): ("layers", "mlp"),
    ("layers", "mlp", "up_proj", "kernel"): ("layers", "embed", "mlp"),
    ("layers", "mlp", "up_proj", "bias"): ("layers", "mlp"),
    ("layers", "mlp", "down_proj", "kernel"): ("layers", "mlp", "embed"),
    ("layers", "mlp", "down_proj", "bias"): ("layers", None),
    ("merger", "ln_q", "scale"): (None,),
    ("merger", "mlp_0", "kernel"): ("embed", "mlp"),     # [4D, 4D]: 4 merged patches in
    ("merger", "mlp_0", "bias"): ("mlp",),
    ("merger", "mlp_2", "kernel"): ("mlp", "embed"),     # [4D, D_text]
    ("merger", "mlp_2", "bias"): (None,),
}
