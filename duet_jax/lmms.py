"""lmms-eval plugin: `duet_jax` as an lmms-eval model (lmms-eval's `lmms_eval.models`
entry-point group; pyproject.toml registers `manifest`, `pip install ".[lmms]"`).

    lmms-eval --model duet_jax \\
        --model_args pretrained=llava-jax,reduction=llava15-duet-64,dtype=bfloat16 \\
        --tasks pope --batch_size 8

model_args: `pretrained` (any directory `duet_jax.load_llava` reads), `reduction`
(a preset name, a .json/.yaml reduction config file, or none: what `eval.py run
--reduction` takes), `dtype` (float32 | bfloat16 | float16), `max_new_tokens`
(default: the request's, else 128), `length_bucket` (as `eval.py run --length-bucket`),
`mesh` (`DxFxT`: data x fsdp x tensor devices, `duet_jax.sharding`); the batch size is
lmms-eval's `--batch_size`.

`generate_until` runs what `eval.py run` runs: the request's text is the user message
(`Handle.encode` wraps it in the family's template), the same right-padded batches of
`batch_size` rows (the last one filled with copies, as `eval.py run` does), the same
length buckets, greedy `generate_batch`, decoded and stripped; lmms-eval's `until`
strings cut the answer. `loglikelihood` scores the continuation's tokens from the same
`logits` (one request at a time, so the reduced rows of the answer are the last ones).
Only image (or text-only) requests of LLaVA-style families; video goes through `eval.py`.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from lmms_eval.api.model import lmms

MODEL_ID = "duet_jax"


def manifest():
    """The entry point lmms-eval loads (`lmms_eval.models` group)."""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id=MODEL_ID, simple_class_path="duet_jax.lmms.DuetJax",
                         aliases=("duet-jax",))


def _mesh(text: Optional[str]):
    if not text:
        return None
    from duet_jax.sharding import make_mesh
    data, fsdp, tensor = (int(x) for x in str(text).lower().split("x"))
    return make_mesh(data=data, fsdp=fsdp, tensor=tensor)


class DuetJax(lmms):
    """An lmms-eval `lmms` over a `duet_jax` handle (see the module docstring)."""

    is_simple = True

    def __init__(self, pretrained: str, reduction: Optional[str] = None, dtype: str = "float32",
                 batch_size: int = 1, max_new_tokens: Optional[int] = None,
                 length_bucket: int = 32, mesh: Optional[str] = None, **_ignored) -> None:
        super().__init__()
        import duet_jax

        from duet_jax.evaluation.runner import parse_reduction

        self.model = duet_jax.load_llava(str(pretrained), dtype=dtype, mesh=_mesh(mesh))
        none = reduction is None or str(reduction).lower() in ("none", "", "null")
        # validated against the model now, not mid-run
        self.reduction = None if none else self.model.reduction(parse_reduction(str(reduction)))
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.length_bucket = int(length_bucket)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ helpers
    def _visual(self, request):
        _, _, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"{MODEL_ID}: one image per request (task {task} gave "
                             f"{len(visuals)})")
        return visuals[0].convert("RGB") if visuals else None

    def _batch(self, prompts: list, images: list) -> dict:
        fill = self.batch_size - len(prompts)
        images = None if all(i is None for i in images) else images + [images[-1]] * fill
        batch = self.model.encode(prompts + [prompts[-1]] * fill, images)
        return self.model.pad_length(batch, self.length_bucket)

    # ------------------------------------------------------------------ lmms API
    def generate_until(self, requests) -> List[str]:
        from duet_jax.progress import progress_bar

        out: List[Optional[str]] = [None] * len(requests)
        groups: dict = {}          # one generation setting (and image / text-only) per batch
        for i, req in enumerate(requests):
            kwargs = dict(req.args[1] or {})
            key = (repr(sorted((k, repr(v)) for k, v in kwargs.items())),
                   req.args[2] is not None)
            groups.setdefault(key, []).append(i)
        bar = progress_bar(total=len(requests), desc=f"{MODEL_ID} generate", unit="q")
        for idxs in groups.values():
            kwargs = dict(requests[idxs[0]].args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = self.max_new_tokens or int(kwargs.get("max_new_tokens") or 128)
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                prompts = [requests[i].args[0] for i in chunk]
                images = [self._visual(requests[i]) for i in chunk]
                has_image = images[0] is not None
                gen = self.model.generate_batch(
                    self._batch(prompts, images), max_new_tokens=max_new,
                    reduction=self.reduction if has_image else None)
                for i, text in zip(chunk, self.model.decode_answers(gen)):
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    out[i] = text.strip()
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], out[i])
                bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        """Sum of the continuation tokens' log-probabilities after the context (and whether
        greedy decoding would produce them), from `Handle.logits`."""
        results = []
        tok = self.model.tokenizer
        for req in requests:
            context, target = req.args[0], req.args[1]
            _, _, _, doc_id, task, split = req.args[:6]
            continuation = target(self.task_dict[task][split][doc_id]) if callable(target) \
                else target
            image = self._visual(req)
            batch = self.model.encode([context], None if image is None else [image])
            length = int(np.asarray(batch["attention_mask"])[0].sum())
            prompt = np.asarray(batch["input_ids"])[0, :length]
            cont = np.asarray(tok(str(continuation), add_special_tokens=False).input_ids)
            ids = np.concatenate([prompt, cont])[None]
            logits = np.asarray(self.model.logits(
                ids, batch.get("pixel_values"), np.ones_like(ids),
                reduction=self.reduction if image is not None else None), np.float32)[0]
            # the reduced sequence keeps every text row: the last len(cont) + 1 rows are the
            # context's last token and the continuation
            rows = logits[len(logits) - len(cont) - 1:len(logits) - 1]
            logp = rows - np.logaddexp.reduce(rows, axis=-1, keepdims=True)
            score = float(logp[np.arange(len(cont)), cont].sum())
            greedy = bool(np.all(rows.argmax(-1) == cont))
            results.append((score, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (score, greedy))
        return results

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError(f"{MODEL_ID}: multi-round generation is not supported")
