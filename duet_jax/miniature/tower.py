"""Stage 0: pretrain the miniature's vision tower alone (its stand-in for CLIP pretraining).

    python -m duet_jax.miniature.tower --config configs/miniature.yaml --out RUN_DIR

LLaVA starts from a CLIP tower trained on its own objective; train.py trains
LLaVA-style stages, not towers. So this small glue trains the tower of the
model described by the YAML (same sizes, tokenizer and config code path as
train.py) on two objectives read off the drawing:

* image level, on the final CLS (post-layernorm, as CLIP's): which colour +
  shape pairs and which letters are in the picture (multi-label). As in
  CLIP, this is what makes the CLS attention of the selection layer point at
  the objects, which VisionZip / DUET's dominant-token choice relies on;
* patch level, on the feature layer the projector reads (second-to-last):
  each patch's colour and kind (shape or letter identity), so the features
  carry the picture's content.

It writes `RUN_DIR/final`: a converted duet_jax checkpoint whose tower is
trained and whose projector and LM are the seeded random init, plus the
tokenizer and image processor; stage 1 (`train.py`, tower frozen) starts from it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from duet_jax.cli import Parser, guarded
from duet_jax.miniature.scenes import COLORS, GLYPH_SHARE, LETTERS, SHAPES, label_map, make_scene

COLOUR_CLASSES = 1 + len(COLORS)                     # 0 = background
KIND_CLASSES = 1 + len(SHAPES) + len(LETTERS)
IMAGE_LABELS = len(COLORS) * len(SHAPES) + len(LETTERS)
OBJECT_WEIGHT = 4.0         # object patches are ~15 % of the picture: weigh them up
MIN_PIXELS = 4              # of a patch's 16 pixels, for the patch to belong to an object


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    # A letter's identity is the last thing the tower learns: at 150 steps it told the
    # 8 letters apart on 0.23 of held-out patches, at 1800 on 0.80, at 3000 on 0.86
    # (`python -m duet_jax.miniature.probe`; 0.996 on the 3000 scenes it trains on).
    steps: int = 3000
    batch_size: int = 24
    lr: float = 2e-3
    warmup_steps: int = 15
    seed: int = 0
    data_seed: int = 0
    images: int = 3000          # scenes of the training split it cycles through
    # A letter's identity shows only across its 9-12 patches, so the tower learns it
    # last and slowest: letter patches weigh 3x other objects', and every scene has two.
    letter_weight: float = 3 * OBJECT_WEIGHT
    letter_share: float = 1.0


def patch_labels(scene, patch: int) -> tuple:
    """(colour [N], kind [N]) class per patch (row-major), 0 where no object covers it."""
    lm = label_map(scene)
    g = lm.shape[0] // patch
    objects = scene.objects
    onehot = lm.reshape(g, patch, g, patch)[..., None] == np.arange(1, len(objects) + 1)
    counts = onehot.sum(axis=(1, 3)).reshape(g * g, -1)              # [N, objects]
    best = counts.argmax(axis=1)
    hit = counts.max(axis=1) >= MIN_PIXELS if objects else np.zeros(g * g, bool)
    colour = np.zeros(g * g, np.int32)
    kind = np.zeros(g * g, np.int32)
    for k, t in enumerate(objects):
        sel = hit & (best == k)
        colour[sel] = 1 + list(COLORS).index(t.color)
        kind[sel] = 1 + (len(SHAPES) + LETTERS.index(t.letter) if t.kind == "letter"
                         else SHAPES.index(t.kind))
    return colour, kind


def image_labels(scene) -> np.ndarray:
    out = np.zeros(IMAGE_LABELS, np.float32)
    for t in scene.shapes:
        out[list(COLORS).index(t.color) * len(SHAPES) + SHAPES.index(t.kind)] = 1.0
    for t in scene.letters:
        out[len(COLORS) * len(SHAPES) + LETTERS.index(t.letter)] = 1.0
    return out


def make_batch(indices: Sequence[int], processor, patch: int, seed: int,
               split: str = "train", glyph_share: float = GLYPH_SHARE) -> dict:
    """Scenes `indices` of `split`: pixels [B, C, H, W] with their patch and image labels."""
    from duet_jax.data.images import preprocess_image
    pixels, colour, kind, present = [], [], [], []
    for i in indices:
        img, scene = make_scene(seed, split, int(i), glyph_share)
        pixels.append(preprocess_image(img, processor))
        c, k = patch_labels(scene, patch)
        colour.append(c)
        kind.append(k)
        present.append(image_labels(scene))
    return {"pixels": np.stack(pixels), "colour": np.stack(colour), "kind": np.stack(kind),
            "present": np.stack(present)}


def init_heads(key, width: int) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    w = lambda k, n: 0.02 * jax.random.normal(k, (width, n))
    return {"colour": w(k1, COLOUR_CLASSES), "kind": w(k2, KIND_CLASSES),
            "present": w(k3, IMAGE_LABELS)}


def normalized_patches(out, layer: int) -> jax.Array:
    """[B, N, D] patch rows (CLS dropped) of hidden state `layer` of a tower output, layer-
    normalised without parameters: what the heads (and the probes) read as the projector's input."""
    feats = out.hidden_states[layer + 1][:, 1:]
    return (feats - feats.mean(-1, keepdims=True)) * jax.lax.rsqrt(
        feats.var(-1, keepdims=True) + 1e-5)


def feature_layer(tower, layer: int, vision_params: dict, pixels: jax.Array) -> jax.Array:
    """[B, N, D] `normalized_patches` of the tower's feature layer for pixels [B, C, H, W]."""
    return normalized_patches(tower.apply(vision_params, pixels, output_hidden_states=True), layer)


def losses(tower, layer: int, params: dict, batch: dict,
           letter_weight: float = OBJECT_WEIGHT) -> tuple:
    """(total loss, metrics) of the two objectives; `layer`: the feature layer's index."""
    out = tower.apply(params["vision"], batch["pixels"], output_hidden_states=True)
    feats = normalized_patches(out, layer)                            # [B, N, D]
    letters = batch["kind"] > len(SHAPES)
    weight = jnp.where(letters, letter_weight, jnp.where(batch["kind"] > 0, OBJECT_WEIGHT, 1.0))
    dense = 0.0
    accs = {}
    for name in ("colour", "kind"):
        logits = feats @ params["heads"][name]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[name])
        dense = dense + jnp.sum(ce * weight) / jnp.sum(weight)
        obj = batch["kind"] > 0
        hits = (logits.argmax(-1) == batch[name]) * obj
        accs[f"{name}_acc"] = jnp.sum(hits) / jnp.maximum(obj.sum(), 1)
    # Letter identity alone: what TextVQA and POPE's letter questions need, and the part of
    # kind_acc a tower learns last (the shapes' fill patterns give them away patch by patch).
    letter_hits = ((feats @ params["heads"]["kind"]).argmax(-1) == batch["kind"]) * letters
    accs["letter_acc"] = jnp.sum(letter_hits) / jnp.maximum(letters.sum(), 1)
    image_logits = out.pooled @ params["heads"]["present"]
    bce = optax.sigmoid_binary_cross_entropy(image_logits, batch["present"]).mean()
    accs["present_acc"] = jnp.mean((image_logits > 0) == (batch["present"] > 0.5))
    total = dense + 4.0 * bce
    return total, dict(accs, dense=dense, image=bce)


def pretrain_tower(config_path: str, overrides: Sequence[str], out_dir: str,
                   tcfg: TowerConfig = TowerConfig(), log=print, save_every: int = 100) -> str:
    """Train the tower, export `out_dir/final`; returns that path.

    A checkpoint every `save_every` steps (`out_dir/checkpoints`, train.py's orbax
    manager): a killed run started again with the same arguments resumes from the
    newest one and ends with the same weights, since step s always trains on the
    same scenes. Long stage-0 runs can so span several sittings.
    """
    from duet_jax.data.images import load_image_processor
    from duet_jax.data.llava_json import load_records
    from duet_jax.models.llava import LlavaModel
    from duet_jax.training import build
    from duet_jax.training.checkpoint import Checkpoints
    from duet_jax.training.config import CheckpointConfig, ConfigError, load_config
    from duet_jax.training.export import export_trained

    cfg = load_config(config_path, [*overrides, f"output_dir={out_dir}"])
    records = load_records(cfg.data.train_json, template=cfg.data.template,
                           image_folder=cfg.data.image_folder, check_images=False)
    assets = build.prepare_assets(cfg, records)
    model_cfg = build.model_config(cfg, build.load_tokenizer(assets))
    model = LlavaModel(model_cfg)
    processor = load_image_processor(assets, image_size=model_cfg.vision.image_size)
    key_model, key_heads = jax.random.split(jax.random.PRNGKey(tcfg.seed))
    params = jax.jit(model.init)(key_model)
    train = {"vision": params["vision"],
             "heads": init_heads(key_heads, model_cfg.vision.hidden_size)}
    warmup = min(tcfg.warmup_steps, tcfg.steps // 4)
    schedule = optax.warmup_cosine_decay_schedule(0.0, tcfg.lr, warmup, max(tcfg.steps, warmup + 1))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    state = {"train": train, "opt": opt.init(train)}
    ckpts = Checkpoints(os.path.join(out_dir, "checkpoints"),
                        CheckpointConfig(save_every=save_every, keep=1, async_save=False))
    settings = dataclasses.asdict(tcfg)
    start, restored, saved = ckpts.restore_newest(
        state, jax.tree.map(lambda a: a.sharding, state), warn=log)
    if restored is not None:
        if saved.get("tower", settings) != settings:
            ckpts.close()
            raise ConfigError(f"{out_dir} holds a stage-0 run with other settings "
                              f"({saved['tower']}); resume it with those, or use another --out")
        state = restored
        log(f"  tower: resuming from step {start}")
    layer = model_cfg.feature_layer_index
    loss_fn = lambda p, b: losses(model.vision, layer, p, b, tcfg.letter_weight)   # noqa: E731

    @jax.jit
    def step(state, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["train"], batch)
        updates, opt_state = opt.update(grads, state["opt"], state["train"])
        return ({"train": optax.apply_updates(state["train"], updates), "opt": opt_state},
                dict(metrics, loss=loss))

    order = np.random.default_rng(tcfg.seed).permutation(tcfg.images)
    patch = model_cfg.vision.patch_size
    metrics_path = os.path.join(out_dir, "tower_metrics.jsonl")
    kept = _metric_lines(metrics_path, start)
    t0 = time.perf_counter()
    with open(metrics_path, "w", encoding="utf-8") as f:
        f.writelines(kept)
        for s in range(start, tcfg.steps):
            lo = (s * tcfg.batch_size) % tcfg.images
            idx = np.take(order, np.arange(lo, lo + tcfg.batch_size), mode="wrap")
            batch = make_batch(idx, processor, patch, tcfg.data_seed,
                               glyph_share=tcfg.letter_share)
            t_step = time.perf_counter()
            state, m = step(state, batch)
            m = {k: float(v) for k, v in m.items()}
            seconds = time.perf_counter() - t_step
            f.write(json.dumps(dict(m, step=s + 1, step_time_s=seconds)) + "\n")
            f.flush()
            if ckpts.should_save(s + 1, tcfg.steps):
                ckpts.save(s + 1, state, {"step": s + 1, "tower": settings})
            if (s + 1) % 50 == 0 or s + 1 == tcfg.steps:
                log(f"  tower step {s + 1}/{tcfg.steps}: loss {m['loss']:.3f}, patch colour acc "
                    f"{m['colour_acc']:.2f}, kind acc {m['kind_acc']:.2f} (letters {m['letter_acc']:.2f}), image-label acc "
                    f"{m['present_acc']:.3f} ({time.perf_counter() - t0:.0f} s)")
    ckpts.close()
    params["vision"] = state["train"]["vision"]
    final, _ = export_trained(params, model_cfg, assets, out_dir, None)
    return final


def _metric_lines(path: str, steps: int) -> list:
    """The first `steps` lines of a resumed run's metrics file (the later ones are retrained)."""
    if not steps or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.readlines()[:steps]


def _train(args) -> int:
    tcfg = TowerConfig(steps=args.steps, lr=args.lr, letter_weight=args.letter_weight,
                       letter_share=args.letter_share)
    print(pretrain_tower(args.config, args.overrides, args.out, tcfg, save_every=args.save_every))
    return 0


def main(argv=None) -> int:
    p = Parser(prog="python -m duet_jax.miniature.tower", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/miniature.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=TowerConfig.steps)
    p.add_argument("--lr", type=float, default=TowerConfig.lr)
    p.add_argument("--letter-weight", type=float, default=TowerConfig.letter_weight,
                   help="weight of letter patches in the patch loss (other objects: "
                        f"{OBJECT_WEIGHT}, background 1)")
    p.add_argument("--letter-share", type=float, default=TowerConfig.letter_share,
                   help="share of the tower's scenes drawn with two letters")
    p.add_argument("--save-every", type=int, default=100)
    args = p.parse_args(argv)
    return guarded(_train, args)


if __name__ == "__main__":
    raise SystemExit(main())
