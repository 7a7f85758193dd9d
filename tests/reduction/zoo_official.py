"""Run the official selection code of the zoo methods, unmodified, as a second reference.

No official code is copied into this repository. When the environment variable
``DUET_ZOO_OFFICIAL`` names a directory holding git clones (or bare mirrors) of
the official repositories as ``<owner>+<name>`` or ``<owner>+<name>/repo``, the
functions below read the cited method out of the cited commit (``git show``),
``exec`` it with PyTorch and call it with a stub ``self`` that hands it our
test inputs (identity projector, a fake vision tower returning the given
arrays). Without the variable the tests that use them skip.

Sources (docs/BASELINES.md §1-§5):
  DivPrune  vbdi/divprune 799e2d9, LLaVA/llava/model/llava_arch.py 147-171
  DART      ZichenWen1/DART (or the fork xqy1111111/DART) 5a19452,
            llava/model/language_model/modeling_llama_self.py 397-449
  VisPruner Theia-4869/VisPruner aefa01a, llava/model/llava_arch.py 141-186
  CDPruner  Theia-4869/CDPruner 9541616, llava/model/llava_arch.py 141-187
  VScan     Tencent/SelfEvolvingAgent a82450e, VScan/llava/model/llava_arch.py 142-293
"""
from __future__ import annotations

import ast
import functools
import math
import os
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

ENV = "DUET_ZOO_OFFICIAL"

SOURCES = {
    "divprune": (("vbdi+divprune",), "799e2d950aa01ba7860907f5a6d86061f885dca6",
                 "LLaVA/llava/model/llava_arch.py"),
    "dart": (("ZichenWen1+DART", "xqy1111111+DART"), "5a19452fc173017191c247848673e0bde755695a",
             "llava/model/language_model/modeling_llama_self.py"),
    "vispruner": (("Theia-4869+VisPruner",), "aefa01adc7c7ce6334e880c88225e90cede760d1",
                  "llava/model/llava_arch.py"),
    "cdpruner": (("Theia-4869+CDPruner",), "9541616c40fcd5625de1cdb8ea6c33c129eb7864",
                 "llava/model/llava_arch.py"),
    "vscan": (("Tencent+SelfEvolvingAgent",), "a82450e1b5e15070bee79ee8b79f8d9a97cb85f7",
              "VScan/llava/model/llava_arch.py"),
}


@functools.lru_cache(maxsize=None)
def _source(method: str):
    """The official file's text at the cited commit, or None when unavailable."""
    root = os.environ.get(ENV)
    if not root:
        return None
    names, commit, path = SOURCES[method]
    for name in names:
        for repo in (Path(root) / name / "repo", Path(root) / name):
            if not repo.exists():
                continue
            out = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                return out.stdout
    return None


def available(method: str) -> bool:
    return _source(method) is not None


def _methods(method: str, *names: str) -> dict:
    """Compile the named methods (functions defined in a class of the file)."""
    import torch
    import torch.nn.functional as F
    text = _source(method)
    tree = ast.parse(text)
    lines = text.splitlines()
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names and node.name not in found:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found[node.name] = textwrap.dedent("\n".join(lines[first - 1:node.end_lineno]))
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"{method}: official source has no {sorted(missing)}")
    namespace = {"torch": torch, "F": F, "math": math, "os": os, "LlamaConfig": object}
    for name, src in found.items():
        exec(compile(src, f"<official {method}:{name}>", "exec"), namespace)
    return {name: namespace[name] for name in names}


def _bind(obj, fns: dict):
    for name, fn in fns.items():
        setattr(obj, name, functools.partial(fn, obj))
    return obj


def divprune(x, k: int):
    """x: torch [N, D] -> official select order (torch long [k])."""
    self = _bind(SimpleNamespace(), _methods("divprune", "pairwise_cosine_similarity",
                                             "DivPrune"))
    n = x.shape[0]
    s, _ = self.DivPrune(x, n, None, threshold_ratio=k / n)
    assert len(s) == k
    return s


def dart(hidden, keys, *, image_start, n_image, n_pivot_image, n_pivot_text,
         max_num_trunction):
    """hidden [S, D], keys [H, S, hd] torch -> official retained image positions (unsorted)."""
    fn = _methods("dart", "get_retained_image_token")["get_retained_image_token"]
    config = SimpleNamespace(text_length=None, DART_config={
        "K": 2, "image_token_start_index": image_start, "image_token_length": n_image,
        "max_num_trunction": max_num_trunction, "pivot_image_token": n_pivot_image,
        "pivot_text_token": n_pivot_text, "reduction_ratio": 0.778,
        "retain_token_num_for_llava_next": 320})
    return fn(SimpleNamespace(), config, hidden[None], keys[None])


class _Model(SimpleNamespace):
    def get_model(self):
        return self

    def get_vision_tower(self):
        return self.tower


def vispruner(features, cls_attn, T: int, important_ratio: float):
    """features [B, N, C], cls_attn [B, H, N] torch -> official index mask [B, N]."""
    fn = _methods("vispruner", "encode_images")["encode_images"]
    self = _Model(tower=lambda images, output_attentions=False: (features, cls_attn),
                  mm_projector=lambda x: x, get_visual_token_num=lambda: T,
                  get_important_ratio=lambda: important_ratio)
    _, mask = fn(self, None)
    return mask


def cdpruner(features, image_embeds, text_embeds, T: int):
    """Projector outputs [B, N, D], image embeds [B, N, P], text embeds [M, P] torch
    -> official index mask [B, N] (identity projector: features are the outputs)."""
    fn = _methods("cdpruner", "encode_images")["encode_images"]
    self = _Model(tower=lambda images, texts=None: (features, image_embeds, text_embeds),
                  mm_projector=lambda x: x, visual_token_num=T)
    _, mask = fn(self, None)
    return mask


def vscan(cls_attn_layers, projected, T: int):
    """cls_attn_layers [L, B, H, N], projected [B, N, D] torch -> official
    (image features [B, N, D] with merged rows at kept positions, index mask [B, N])."""
    fns = _methods("vscan", "token_merging", "window_cls_selection", "encode_images")
    self = _Model(tower=lambda images: (projected.clone(), cls_attn_layers.clone()),
                  mm_projector=lambda x: x, get_visual_token_num=lambda: T)
    _bind(self, {k: fns[k] for k in ("token_merging", "window_cls_selection")})
    feats, mask, _ = fns["encode_images"](self, None)
    return feats, mask
