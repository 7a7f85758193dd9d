"""Independent NumPy oracle of DUET-VLM Stage 1 and Stage 2.

Written straight from docs/ALGORITHM.md §2 (vision merge), §3 (text-to-vision
rank-and-drop) and docs/ALGORITHM.md §4.1/§5 (budget accounting), never from the JAX code it
checks. Everything is plain Python loops over samples, heads and rows in
float64, so each line can be read against one sentence of the spec; speed is
irrelevant (test shapes are tiny).

Tie rule everywhere (docs/ALGORITHM.md §2.8): ties go to the lowest index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STAGE1_MODES = ("duet", "visionzip", "paper")


def top_k_lowest_first(values, k: int) -> list[int]:
    """Indices of the k largest values, descending value, ties -> lowest index."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return order[:k]


def argmax_first(values) -> int:
    """Index of the first maximum (strict > keeps the lowest index on ties)."""
    best = 0
    for j in range(1, len(values)):
        if values[j] > values[best]:
            best = j
    return best


# --------------------------------------------------------------------------
# Stage 1 (docs/ALGORITHM.md §2)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeTrace:
    """One sample's Stage-1 result plus the bookkeeping the spec talks about.

    tokens [K, D] float64, positions [K] (vision-sequence positions: 0 = CLS,
    patch p -> p + 1, contextual row -> its anchor/centroid).
    """

    tokens: np.ndarray
    positions: np.ndarray
    anchor_slots: tuple[int, ...]  # duet: pool slots; visionzip: filtered idx
    num_merged: int  # non-dominant rows averaged into some contextual token
    num_dropped: int  # non-dominant rows that reach no output row
    # smallest decisive gap (duet/visionzip: best-minus-runner-up cosine of
    # each member; paper: each neighbourhood's top-w cut); inf if no contest.
    # Parity tests use it to reject near-tied random draws.
    assign_margin: float = float("inf")


def _check_stage1_args(num_patches, dominant, contextual, width, mode):
    if mode not in STAGE1_MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {STAGE1_MODES}")
    if not 1 <= dominant <= num_patches:
        raise ValueError(f"dominant={dominant} must be in [1, N={num_patches}]")
    if contextual < 0 or width < 1:
        raise ValueError("contextual must be >= 0 and width >= 1")
    if mode == "visionzip" and contextual == 0:
        raise ValueError("visionzip needs contextual >= 1")


def merge_size(num_patches: int, dominant: int, contextual: int, width: int = 4,
               mode: str = "duet") -> int:
    """K from docs/ALGORITHM.md §2.6 / §2.5, written as the table states it."""
    _check_stage1_args(num_patches, dominant, contextual, width, mode)
    if mode == "paper":
        return dominant + min(contextual, num_patches - dominant)
    m = num_patches - (dominant - 1)
    if mode == "duet" and contextual == 0:
        return dominant + 1
    return dominant + min(contextual, m)


def _dominant_split(cls_attn_b, dominant):
    """docs/ALGORITHM.md §2.2 steps 1-4 for one sample: (dominant positions,
    R patch indices, s)."""
    num_heads, num_patches = cls_attn_b.shape
    s = [sum(float(cls_attn_b[h, p]) for h in range(num_heads))
         for p in range(num_patches)]
    dom = top_k_lowest_first(s, dominant - 1)
    dom_positions = [0] + sorted(p + 1 for p in dom)
    rest = [p for p in range(num_patches) if p not in set(dom)]
    return dom_positions, rest, s


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.sqrt(np.sum(v * v))


def _merge_into_anchors(hidden_b, metric_b, rest, anchors, members):
    """docs/ALGORITHM.md §2.3 steps 8-9: cosine assignment and anchor + mean(members).

    anchors / members are filtered indices m (patch rest[m], row rest[m] + 1).
    Returns (contextual rows, smallest assignment margin).
    """
    anchor_units = [_unit(metric_b[rest[t] + 1]) for t in anchors]
    assigned = [[] for _ in anchors]
    margin = float("inf")
    for m in members:
        u = _unit(metric_b[rest[m] + 1])
        sims = [float(np.dot(u, a)) for a in anchor_units]
        assigned[argmax_first(sims)].append(m)
        if len(sims) > 1:
            top2 = sorted(sims)[-2:]
            margin = min(margin, top2[1] - top2[0])
    rows = []
    for j, t in enumerate(anchors):
        row = np.array(hidden_b[rest[t] + 1], dtype=np.float64)
        if assigned[j]:
            total = sum(np.array(hidden_b[rest[m] + 1], dtype=np.float64)
                        for m in assigned[j])
            row = row + total / len(assigned[j])
        rows.append(row)
    return rows, margin


def merge_sample(cls_attn_b, hidden_b, metric_b, dominant, contextual, width,
                 mode, attention_b=None) -> MergeTrace:
    """Stage 1 for one crop. cls_attn_b [H, N], hidden_b [N+1, D],
    metric_b [N+1, Dm], attention_b [H, N+1, N+1] (paper mode only)."""
    num_patches = hidden_b.shape[0] - 1
    _check_stage1_args(num_patches, dominant, contextual, width, mode)
    if mode == "paper":
        return _paper_sample(attention_b, hidden_b, dominant, contextual, width)
    dom_positions, rest, s = _dominant_split(cls_attn_b, dominant)
    m_count = len(rest)
    s_rest = [s[p] for p in rest]
    if mode == "duet":
        pool_size = min(max(1, width * contextual), m_count)
        pool = top_k_lowest_first(s_rest, pool_size)
        step = max(1, pool_size // max(1, contextual))
        slots = list(range(0, pool_size, step))[:contextual] or [0]
        anchors = [pool[a] for a in slots]
        members = [pool[i] for i in range(pool_size) if i not in slots]
        dropped = m_count - pool_size
    else:  # visionzip
        step = max(1, m_count // contextual)
        slots = list(range(0, m_count, step))[:contextual]
        anchors = list(slots)
        members = [m for m in range(m_count) if m not in slots]
        dropped = 0
    rows = [np.array(hidden_b[q], dtype=np.float64) for q in dom_positions]
    merged_rows, margin = _merge_into_anchors(hidden_b, metric_b, rest, anchors,
                                              members)
    positions = dom_positions + [rest[t] + 1 for t in anchors]
    return MergeTrace(np.stack(rows + merged_rows), np.array(positions),
                      tuple(slots), len(members), dropped, margin)


def _paper_sample(attention_b, hidden_b, k1, k2, width) -> MergeTrace:
    """docs/ALGORITHM.md §2.5, Algorithm 1 as printed, on the patch block of one sample."""
    if attention_b is None:
        raise ValueError("paper mode needs the full attention [H, T, T]")
    attn = np.asarray(attention_b, dtype=np.float64)
    num_heads, t_len, _ = attn.shape
    n = t_len - 1
    abar = [[sum(attn[h, 1 + i, 1 + j] for h in range(num_heads)) / num_heads
             for j in range(n)] for i in range(n)]
    s = [sum(abar[j][i] for j in range(n)) for i in range(n)]
    dom = top_k_lowest_first(s, k1)
    rest = [p for p in range(n) if p not in set(dom)]
    centroids_f = top_k_lowest_first([s[p] for p in rest], min(k2, len(rest)))
    centroids = [rest[f] for f in centroids_f]
    w = min(width, len(rest))
    rows = [np.array(hidden_b[p + 1], dtype=np.float64) for p in sorted(dom)]
    covered = set()
    margin = float("inf")  # gap at each neighbourhood's top-w cut
    for c in centroids:
        row = [abar[c][p] for p in rest]
        neigh = [rest[f] for f in top_k_lowest_first(row, w)]
        if w < len(rest):
            ranked = sorted(row, reverse=True)
            margin = min(margin, ranked[w - 1] - ranked[w])
        covered.update(neigh)
        rows.append(sum(np.array(hidden_b[p + 1], dtype=np.float64)
                        for p in neigh) / len(neigh))
    positions = [p + 1 for p in sorted(dom)] + [c + 1 for c in centroids]
    # "merged" = residual rows averaged into some z_c (centroids included
    # when they fall in a neighbourhood); the others are dropped (step 5).
    return MergeTrace(np.stack(rows), np.array(positions), tuple(centroids_f),
                      len(covered), len(rest) - len(covered), margin)


def vision_merge(cls_attn, hidden, metric, dominant, contextual, width=4,
                 mode="duet", attention=None):
    """Batched Stage 1. Returns (tokens [B, K, D] float64, positions [B, K],
    traces: list of MergeTrace)."""
    traces = [merge_sample(None if cls_attn is None else cls_attn[b], hidden[b],
                           None if metric is None else metric[b], dominant,
                           contextual, width, mode,
                           None if attention is None else attention[b])
              for b in range(hidden.shape[0])]
    return (np.stack([t.tokens for t in traces]),
            np.stack([t.positions for t in traces]), traces)


# --------------------------------------------------------------------------
# Stage 2 (docs/ALGORITHM.md §3)
# --------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    """Llama RMSNorm of one row: float32 statistics, back to x's dtype, * weight."""
    x32 = np.asarray(x, dtype=np.float32)
    var = np.mean(x32.astype(np.float64) ** 2)
    normed = (x32.astype(np.float64) / np.sqrt(var + eps)).astype(np.asarray(x).dtype)
    return np.asarray(weight, dtype=np.float64) * normed.astype(np.float64)


def rope_rotate_half(vec, position, theta):
    """Rotate-half RoPE of one head vector [hd] at an integer position."""
    hd = vec.shape[-1]
    half = hd // 2
    out = np.empty(hd, dtype=np.float64)
    for i in range(half):
        angle = position * (1.0 / theta ** (2 * i / hd))
        c, s = np.cos(angle), np.sin(angle)
        x1, x2 = float(vec[i]), float(vec[i + half])
        out[i] = x1 * c - x2 * s  # rotate_half puts -x2 in the first half
        out[i + half] = x2 * c + x1 * s
    return out


def attention_probs(hidden_b, norm_scale, wq, wk, positions_b, valid_b, *,
                    num_heads, num_kv_heads, rms_eps, rope_theta):
    """Softmax attention [H, L, L] of the next layer on one sample (docs/ALGORITHM.md §3.2 1-5).

    Key j is allowed for query q iff j <= q and valid_b[j]; a row with no
    allowed key (never a query in practice) is left all-zero.
    """
    seq = hidden_b.shape[0]
    hd = wq.shape[1] // num_heads
    group = num_heads // num_kv_heads
    x = np.stack([rms_norm(hidden_b[r], norm_scale, rms_eps) for r in range(seq)])
    q = (x @ np.asarray(wq, np.float64)).reshape(seq, num_heads, hd)
    k = (x @ np.asarray(wk, np.float64)).reshape(seq, num_kv_heads, hd)
    probs = np.zeros((num_heads, seq, seq))
    for h in range(num_heads):
        g = h // group  # repeat-interleave order: query head h -> kv head h // group
        qs = [rope_rotate_half(q[r, h], int(positions_b[r]), rope_theta) for r in range(seq)]
        ks = [rope_rotate_half(k[r, g], int(positions_b[r]), rope_theta) for r in range(seq)]
        for r in range(seq):
            allowed = [j for j in range(r + 1) if valid_b[j]]
            if not allowed:
                continue
            logits = np.array([np.dot(qs[r], ks[j]) / np.sqrt(hd) for j in allowed])
            e = np.exp(logits - logits.max())
            probs[h, r, allowed] = e / e.sum()
    return probs


def text_image_scores(hidden, norm_scale, wq, wk, positions, attention_mask,
                      query_mask, image_start, *, num_image, num_heads,
                      num_kv_heads, rms_eps, rope_theta):
    """docs/ALGORITHM.md §3.2 step 6: [B, num_image] mean over heads and query rows of the image
    columns. A sample with an empty query set scores all zeros."""
    batch = hidden.shape[0]
    out = np.zeros((batch, num_image))
    for b in range(batch):
        probs = attention_probs(hidden[b], norm_scale, wq, wk, positions[b],
                                np.asarray(attention_mask[b]).astype(bool),
                                num_heads=num_heads, num_kv_heads=num_kv_heads,
                                rms_eps=rms_eps, rope_theta=rope_theta)
        rows = [r for r in range(hidden.shape[1]) if query_mask[b][r]]
        p_b = int(image_start[b])
        for i in range(num_image):
            vals = [probs[h, r, p_b + i] for h in range(num_heads) for r in rows]
            out[b, i] = sum(vals) / len(vals) if vals else 0.0
    return out


def keep_top_image_tokens(scores, k):
    """docs/ALGORITHM.md §3.2 step 7: [B, k] top-k image indices (ties -> lowest), ascending."""
    return np.array([sorted(top_k_lowest_first(row, k)) for row in scores],
                    dtype=np.int64).reshape(len(scores), k)


def valid_length(mask_b) -> int:
    """len_b for a right-padded row: the number of valid tokens."""
    return int(np.sum(np.asarray(mask_b).astype(bool)))


def official_query_mask(image_start, num_image, seq_len):
    """docs/ALGORITHM.md §3.3 `all`, official: rows p_b + n .. end of the padded sequence,
    padding rows included (docs/ALGORITHM.md §6 D6). No image (p_b < 0): empty."""
    out = np.zeros((len(image_start), seq_len), dtype=bool)
    for b, p_b in enumerate(image_start):
        if p_b >= 0:
            out[b, p_b + num_image:] = True
    return out


def eval_all_query_mask(attention_mask, image_start, num_image):
    """docs/ALGORITHM.md §3.3 `all`, project evaluation default: valid rows after the image."""
    out = np.zeros(np.shape(attention_mask), dtype=bool)
    for b, p_b in enumerate(image_start):
        for r in range(out.shape[1]):
            out[b, r] = p_b >= 0 and r >= p_b + num_image and bool(attention_mask[b][r])
    return out


def train_all_query_mask(attention_mask, labels, image_start, num_image):
    """docs/ALGORITHM.md §3.3 `all`, training: valid rows after the image whose label is -100."""
    out = eval_all_query_mask(attention_mask, image_start, num_image)
    return out & (np.asarray(labels) == -100)


def eval_last_query_mask(attention_mask):
    """docs/ALGORITHM.md §3.3 `last`, evaluation: the last valid prompt token len_b - 1."""
    out = np.zeros(np.shape(attention_mask), dtype=bool)
    for b in range(out.shape[0]):
        out[b, valid_length(attention_mask[b]) - 1] = True
    return out


def train_last_query_mask(attention_mask, labels):
    """docs/ALGORITHM.md §3.3 `last`, training: every valid q with label[q] = -100 and
    label[q+1] != -100 (the token just before each answer span)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for b in range(labels.shape[0]):
        for q in range(labels.shape[1] - 1):
            out[b, q] = (bool(attention_mask[b][q]) and labels[b, q] == -100
                         and labels[b, q + 1] != -100)
    return out


def drop_and_rebuild(hidden, labels, attention_mask, image_start, keep,
                     num_image, out_len=None):
    """docs/ALGORITHM.md §3.4 for a right-padded batch.

    hidden [B, L, D], labels [B, L], attention_mask [B, L], image_start [B]
    (-1 = pass-through), keep [B, n_s] relative to image_start. Returns
    (hidden' [B, L', D], labels' [B, L'], mask' [B, L'], positions' [B, L'])
    with L' = out_len or the batch maximum new length.
    """
    new_rows = []
    for b in range(hidden.shape[0]):
        len_b = valid_length(attention_mask[b])
        p_b = int(image_start[b])
        if p_b < 0:
            src = list(range(len_b))
        else:
            src = (list(range(p_b)) + [p_b + int(i) for i in keep[b]]
                   + list(range(p_b + num_image, len_b)))
        new_rows.append(src)
    width = out_len if out_len is not None else max(len(s) for s in new_rows)
    batch, dim = hidden.shape[0], hidden.shape[2]
    h_out = np.zeros((batch, width, dim))
    l_out = np.full((batch, width), -100, dtype=np.int64)
    m_out = np.zeros((batch, width), dtype=bool)
    pos_out = np.zeros((batch, width), dtype=np.int64)
    for b, src in enumerate(new_rows):
        for j, s in enumerate(src):
            h_out[b, j] = hidden[b, s]
            l_out[b, j] = labels[b, s]
            m_out[b, j] = True
            pos_out[b, j] = j  # renumbered 0 .. len'_b - 1
    return h_out, l_out, m_out, pos_out


# --------------------------------------------------------------------------
# Schedule and budgets (docs/ALGORITHM.md §3.1, §4.1, §5)
# --------------------------------------------------------------------------


def schedule_counts(n0: int, ratios) -> list[int]:
    """[n_0, n_1, ..] with n_s = int(n_0 * r_s) (Python float64 floor)."""
    return [n0] + [int(n0 * r) for r in ratios]


def average_tokens(n0: int, layers, ratios, num_layers: int) -> float:
    """docs/ALGORITHM.md §4.1: visual tokens per LM layer averaged over the num_layers layers."""
    counts = schedule_counts(n0, ratios)
    bounds = [0] + list(layers) + [num_layers]
    total = sum((bounds[s + 1] - bounds[s]) * counts[s] for s in range(len(counts)))
    return total / num_layers


def fastv_average_tokens(num_patches: int, drop_layer: int, kept: int,
                         num_layers: int) -> float:
    """docs/ALGORITHM.md §5 FastV: (K_f N + (L - K_f) k) / L."""
    return (drop_layer * num_patches + (num_layers - drop_layer) * kept) / num_layers
