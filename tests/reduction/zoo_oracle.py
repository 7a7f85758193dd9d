"""Independent NumPy oracles of the method zoo (docs/BASELINES.md §1-§7).

Written from the method descriptions in docs/BASELINES.md and a reading of
each official repository (commit and file:lines cited per function), never
from the JAX code they check. Plain Python loops over one sample at a time in
float64, lists where the official code keeps lists, so each step can be read
against one sentence of the description; speed is irrelevant.

Tie rules: "argmax" is the first maximum (``torch.argmax``). Where upstream
ties are unspecified (``torch.topk``/``argsort``), the oracle takes the lowest
index; tests only rely on that where a test constructs no such tie.

Every selection oracle also returns ``margin``: the smallest gap between a
chosen value and the best value it beat, over every decision taken. Float32
tests skip draws whose margin is within rounding noise.
"""
from __future__ import annotations

import math

import numpy as np


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.sqrt(np.sum(v * v))


def _cos(u, v, eps=1e-8):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(np.dot(u, v) / max(np.sqrt(np.dot(u, u)) * np.sqrt(np.dot(v, v)), eps * eps))


def argmax_first(values):
    best = 0
    for j in range(1, len(values)):
        if values[j] > values[best]:
            best = j
    return best


def top_desc(values, k, candidates=None):
    """The k candidates of largest value, descending, ties -> lowest index."""
    cands = range(len(values)) if candidates is None else candidates
    return sorted(cands, key=lambda i: (-float(values[i]), i))[:k]


def _gap_at(values, chosen_value, rivals):
    """Gap between a chosen value and the best rival (inf if none)."""
    rivals = [float(values[i]) for i in rivals]
    return chosen_value - max(rivals) if rivals else math.inf


def _cut_gap(values, order, k):
    """Decisive gap of taking the first k of ``order`` (sorted descending):
    value of the k-th minus value of the (k+1)-th."""
    if 0 < k < len(order):
        return float(values[order[k - 1]]) - float(values[order[k]])
    return math.inf


# --------------------------------------------------------------------------
# 1. DivPrune (vbdi/divprune @ 799e2d9, LLaVA/llava/model/llava_arch.py 147-171)


def divprune_sample(x, k):
    """x [N, D] -> (select_order, margin)."""
    n = len(x)
    units = [_unit(r) for r in x]
    dist = [[1.0 - float(np.dot(units[i], units[j])) for j in range(n)] for i in range(n)]
    first_scores = [sorted(dist[i][j] for i in range(n))[1] for j in range(n)]
    order = [argmax_first(first_scores)]
    margin = _gap_at(first_scores, first_scores[order[0]], [j for j in range(n) if j != order[0]])
    for _ in range(1, k):
        scores = [min(dist[i][j] for i in order) for j in range(n)]
        pick = argmax_first(scores)
        margin = min(margin, _gap_at(scores, scores[pick], [j for j in range(n) if j != pick]))
        order.append(pick)
    return order, margin


def divprune(features, k):
    out = [divprune_sample(x, k) for x in np.asarray(features, np.float64)]
    order = np.array([o for o, _ in out], np.int64)
    return {"select_order": order, "keep": np.sort(order, axis=1),
            "margin": min(m for _, m in out)}


# --------------------------------------------------------------------------
# 2. DART (ZichenWen1/DART @ 5a19452, llava/model/language_model/
#    modeling_llama_self.py 397-449 get_retained_image_token)


def pyset_emulated(keys):
    """CPython's set slot order for distinct small non-negative ints, as the
    pseudo-code of docs/BASELINES.md §2 states it (hash(i) == i)."""
    table = [None] * 8

    def insert(tab, key):
        mask = len(tab) - 1
        i, perturb = key & mask, key
        while True:
            last = i + 9 if i + 9 <= mask else i
            for j in range(i, last + 1):
                if tab[j] is None:
                    tab[j] = key
                    return
            perturb >>= 5
            i = (5 * i + 1 + perturb) & mask

    for n, key in enumerate(keys, start=1):
        insert(table, key)
        if 5 * n >= 3 * (len(table) - 1):
            old = [x for x in table if x is not None]
            size = 8
            while size <= 4 * n:
                size *= 2
            table = [None] * size
            for x in old:
                insert(table, x)
    return [x for x in table if x is not None]


def dart(hidden, keys, *, image_start=35, n_image=576, n_pivot_image=4, n_pivot_text=4,
         token_topk, valid_length=None, visit=None):
    """One sample: hidden [S, D], keys [H, S, hd]. Pivots are visited in the real
    ``list(set(...))`` order of this interpreter, as upstream does (``visit``:
    another order, a function of the pivot list, to show that the order matters)."""
    hidden = np.asarray(hidden, np.float64)
    keys = np.asarray(keys, np.float64)
    seq = hidden.shape[0]
    end = seq if valid_length is None else int(valid_length)
    a, b = image_start, image_start + n_image
    l1 = [float(np.sum(np.abs(keys[:, s, :]))) for s in range(seq)]
    img_order = top_desc(l1, n_image, range(a, b))
    txt_order = top_desc(l1, end - b, range(b, end))
    image_pivots = img_order[:n_pivot_image]
    text_pivots = txt_order[:n_pivot_text]
    margin = min(_cut_gap(l1, img_order, n_pivot_image), _cut_gap(l1, txt_order, n_pivot_text))
    pivot_order = list(set(image_pivots + text_pivots))
    if visit is not None:
        pivot_order = list(visit(image_pivots + text_pivots))
    pool = [q for q in range(a, b) if q not in image_pivots]
    kept = list(image_pivots)
    picks = []
    for p in pivot_order:
        cos = {q: _cos(hidden[p], hidden[q]) for q in pool}
        ranked = sorted(pool, key=lambda q: (cos[q], q))         # lowest cosine first
        chosen = ranked[:token_topk]
        if 0 < token_topk < len(ranked):
            margin = min(margin, cos[ranked[token_topk]] - cos[ranked[token_topk - 1]])
        picks.append(chosen)
        kept += chosen
        pool = [q for q in pool if q not in set(chosen)]
    return {"keep": np.array(sorted(kept)), "image_pivots": np.array(image_pivots),
            "text_pivots": np.array(text_pivots), "pivot_order": np.array(pivot_order),
            "picks": np.array(picks).reshape(len(pivot_order), token_topk), "margin": margin}


# --------------------------------------------------------------------------
# 3. VisPruner (Theia-4869/VisPruner @ aefa01a, llava/model/llava_arch.py 141-186)


def vispruner_sample(x, attn, T, important_ratio):
    """x [N, C], attn [H, N] -> dict (lists) with margin."""
    n = len(x)
    t_imp = int(T * important_ratio)
    t_div = T - t_imp
    score = [float(np.mean(attn[:, p])) for p in range(n)]
    rank = top_desc(score, n)
    margin = _cut_gap(score, rank, t_imp)
    important, res = rank[:t_imp], rank[t_imp:]
    units = [_unit(r) for r in x]
    while t_div > 0:
        length = len(res)
        r = min(8, length - t_div)
        if r <= 0:
            break
        assert length % 2 == 0, "the official code crashes on an odd list"
        assert r <= length // 2, "the official code crashes dropping more than R/2"
        ev, od = res[0::2], res[1::2]
        od_units = np.array([units[o] for o in od])
        s = [float(np.max(od_units @ units[e])) for e in ev]
        order = top_desc(s, len(ev))
        if r < len(order):
            margin = min(margin, _cut_gap(s, order, r))
        # the order of the survivors feeds the next split: every adjacent gap counts
        for i in range(r, len(order) - 1):
            margin = min(margin, s[order[i]] - s[order[i + 1]])
        res = [ev[i] for i in order[r:]] + od
    selected = important + res if t_div > 0 else important
    return {"important": important, "selected_order": selected, "margin": margin}


def vispruner(features, cls_attn, T, important_ratio):
    feats, attn = np.asarray(features, np.float64), np.asarray(cls_attn, np.float64)
    out = [vispruner_sample(f, a, T, important_ratio) for f, a in zip(feats, attn)]
    sel = np.array([o["selected_order"] for o in out])
    return {"important": np.array([o["important"] for o in out]).reshape(len(out), -1),
            "selected_order": sel, "keep": np.sort(sel, axis=1),
            "margin": min(o["margin"] for o in out)}


# --------------------------------------------------------------------------
# 4. CDPruner (Theia-4869/CDPruner @ 9541616, llava/model/llava_arch.py 141-187)


def cdpruner(features, image_embeds, text_embeds, T):
    """Batched like the official function: one question, min/max over the batch."""
    feats = np.asarray(features, np.float64)
    ie = np.asarray(image_embeds, np.float64)
    te = np.asarray(text_embeds, np.float64)
    bsz, n, _ = feats.shape
    t_units = [_unit(t) for t in te]
    rel = np.array([[-np.mean([float(np.dot(_unit(ie[b, i]), t)) for t in t_units])
                     for i in range(n)] for b in range(bsz)])
    lo, hi = rel.min(), rel.max()
    rel = (rel - lo + 1e-6) / (hi - lo)
    orders, margin = [], math.inf
    for b in range(bsz):
        units = [_unit(r) for r in feats[b]]
        kern = [[rel[b, i] * float(np.dot(units[i], units[j])) * rel[b, j] for j in range(n)]
                for i in range(n)]
        d2 = [kern[i][i] for i in range(n)]
        cs, order = [], []
        for _ in range(T):
            j = argmax_first(d2)
            rivals = [i for i in range(n) if i != j and d2[i] != -math.inf]
            margin = min(margin, _gap_at(d2, d2[j], rivals))
            e = [(kern[j][m] - sum(c[j] * c[m] for c in cs)) / math.sqrt(d2[j])
                 for m in range(n)]
            cs.append(e)
            d2 = [d2[m] - e[m] ** 2 for m in range(n)]
            d2[j] = -math.inf
            order.append(j)
        orders.append(order)
    order = np.array(orders)
    return {"select_order": order, "keep": np.sort(order, axis=1), "relevance": rel,
            "margin": margin}


# --------------------------------------------------------------------------
# 5. VScan stage 1 (Tencent/SelfEvolvingAgent @ a82450e, VScan/llava/model/
#    llava_arch.py 142-293: token_merging, window_cls_selection, encode_images)


def vscan_sample(attn_layers, proj, T, window=6, shallow_layer=5):
    """attn_layers [L, H, N] (one sample), proj [N, D]; the local scan reads
    layer `shallow_layer` (VScan's 5), the global scan layer -2."""
    n = attn_layers.shape[-1]
    side = math.isqrt(n)
    g = side // window
    shallow = [float(np.mean(attn_layers[shallow_layer][:, p])) for p in range(n)]
    deep = [float(np.mean(attn_layers[-2][:, p])) for p in range(n)]
    n_loc = int(T * 0.5)
    k_w = n_loc // (g * g)
    margin = math.inf
    local = []
    for wy in range(g):
        for wx in range(g):
            cells = [(wy * window + dy) * side + wx * window + dx
                     for dy in range(window) for dx in range(window)]
            ranked = top_desc(shallow, len(cells), cells)
            margin = min(margin, _cut_gap(shallow, ranked, k_w))
            local += ranked[:k_w]
    for p in local:
        deep[p] = 0.0
    n_glob = T - n_loc
    ranked = top_desc(deep, n)
    margin = min(margin, _cut_gap(deep, ranked, n_glob))
    glob = ranked[:n_glob]
    if T == n:
        return {"keep": list(range(n)), "merged": np.asarray(proj, np.float64), "local": local,
                "global": glob, "merge_target": [], "margin": margin}
    keep = sorted(set(local) | set(glob))
    dropped = [p for p in range(n) if p not in set(keep)]
    targets = []
    for p in dropped:
        sims = [_cos(proj[p], proj[q]) for q in keep]
        t = argmax_first(sims)
        margin = min(margin, _gap_at(sims, sims[t], [i for i in range(len(keep)) if i != t]))
        targets.append(t)
    merged = []
    for j, q in enumerate(keep):
        members = [proj[p] for p, t in zip(dropped, targets) if t == j]
        merged.append((np.asarray(proj[q], np.float64) + sum(np.asarray(m, np.float64)
                                                             for m in members))
                      / (1 + len(members)))
    return {"keep": keep, "merged": np.array(merged), "local": local, "global": glob,
            "merge_target": targets, "margin": margin}


def vscan_stage1(cls_attn_layers, projected, T, shallow_layer=5):
    attn = np.asarray(cls_attn_layers, np.float64)
    proj = np.asarray(projected, np.float64)
    out = [vscan_sample(attn[:, b], proj[b], T, shallow_layer=shallow_layer)
           for b in range(proj.shape[0])]
    res = {key: np.array([o[key] for o in out]) for key in
           ("keep", "merged", "local", "global", "merge_target")}
    res["merge_target"] = res["merge_target"].reshape(len(out), -1)
    res["margin"] = min(o["margin"] for o in out)
    return res


# --------------------------------------------------------------------------
# 7. Controls


def pool_tokens(features, k):
    """2-D adaptive average pooling of the square grid to floor(sqrt(k)) a side."""
    x = np.asarray(features, np.float64)
    bsz, n, d = x.shape
    grid, side = math.isqrt(n), math.isqrt(k)
    out = np.zeros((bsz, side * side, d))
    for u in range(side):
        r0, r1 = (grid * u) // side, math.ceil(grid * (u + 1) / side)
        for v in range(side):
            c0, c1 = (grid * v) // side, math.ceil(grid * (v + 1) / side)
            cells = [r * grid + c for r in range(r0, r1) for c in range(c0, c1)]
            out[:, u * side + v] = x[:, cells].mean(axis=1)
    return out
