"""Linear probes of a miniature's tower: what its feature layer says about each patch.

    python -m duet_jax.miniature.probe CHECKPOINT [--train-scenes 800] [--test-scenes 300]

The LM reads the tower's feature layer (the second-to-last, as LLaVA reads
CLIP's) and nothing else of the picture, so a fact the features do not carry
cannot be answered, however long stage 1 trains. This measures that without
training an LM: multinomial logistic regressions on the (frozen) features of
the patches of training scenes, scored on scenes of a held-out stream, for

* colour: the patches of objects (5-way),
* shape identity: the patches of shapes (4-way),
* letter identity: the patches of letters (8-way), what TextVQA and the
  letter questions of POPE need.

Each score comes with its chance level (the most frequent class of the test
patches). A tower change is worth the LM stages only where it moves these.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from duet_jax.cli import Parser, guarded, quiet_libraries
from duet_jax.miniature.scenes import COLORS, LETTERS, SHAPES, make_scene
from duet_jax.miniature.tower import feature_layer, patch_labels

PROBE_STEPS = 500
PROBE_LR = 0.05
PROBE_L2 = 1e-4
HELD_OUT = "probe"          # the scene stream the probes are scored on (no split uses it)


def patch_features(model, split: str, count: int, seed: int = 0,
                   batch: int = 32) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [P, D], colour [P], kind [P]) over every patch of scenes 0..count-1 of
    `split`: the feature layer the projector reads, layer-normalised without parameters."""
    from duet_jax.data.images import preprocess_image
    cfg = model.config
    run = jax.jit(lambda pixels: feature_layer(model.module.vision, cfg.feature_layer_index,
                                               model.params["vision"], pixels))
    feats, colours, kinds = [], [], []
    for lo in range(0, count, batch):
        pixels = []
        for i in range(lo, min(lo + batch, count)):
            img, scene = make_scene(seed, split, i)
            pixels.append(preprocess_image(img, model.image_processor))
            colour, kind = patch_labels(scene, cfg.vision.patch_size)
            colours.append(colour)
            kinds.append(kind)
        out = np.asarray(run(jnp.asarray(np.stack(pixels))))
        feats.append(out.reshape(-1, out.shape[-1]))
    return np.concatenate(feats), np.concatenate(colours), np.concatenate(kinds)


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = PROBE_STEPS) -> np.ndarray:
    """[D + 1, classes] weights (bias last) of an L2-regularised softmax regression of
    y [P] on x [P, D], full-batch Adam from zeros: the same data give the same probe."""
    xb = jnp.asarray(np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1))
    labels = jnp.asarray(y)
    opt = optax.adam(PROBE_LR)

    def loss(w):
        ce = optax.softmax_cross_entropy_with_integer_labels(xb @ w, labels).mean()
        return ce + PROBE_L2 * jnp.sum(w * w)

    @jax.jit
    def fit(w):
        def step(carry, _):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state)
            return (optax.apply_updates(w, updates), state), None
        (w, _), _ = jax.lax.scan(step, (w, opt.init(w)), None, length=steps)
        return w

    return np.asarray(fit(jnp.zeros((x.shape[1] + 1, classes), jnp.float32)))


def probe_accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ w[:-1] + w[-1]
    return float(np.mean(logits.argmax(-1) == y))


def chance(y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class."""
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


def probe_model(model, train_scenes: int = 800, test_scenes: int = 300,
                seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{colour | shape | letter: {"train", "test", "chance", "patches"}} for a loaded
    miniature (`duet_jax.load_llava`)."""
    train = patch_features(model, "train", train_scenes, seed)
    test = patch_features(model, HELD_OUT, test_scenes, seed)
    n_shapes = len(SHAPES)
    tasks = {  # name: (patch selector on kind, label from (colour, kind), classes)
        "colour": (lambda k: k > 0, lambda c, k: c - 1, len(COLORS)),
        "shape": (lambda k: (k > 0) & (k <= n_shapes), lambda c, k: k - 1, n_shapes),
        "letter": (lambda k: k > n_shapes, lambda c, k: k - n_shapes - 1, len(LETTERS))}
    out = {}
    for name, (select, label, classes) in tasks.items():
        (xa, ca, ka), (xb, cb, kb) = train, test
        sa, sb = select(ka), select(kb)
        ya, yb = label(ca[sa], ka[sa]), label(cb[sb], kb[sb])
        if not len(ya) or not len(yb):
            raise ValueError(f"no {name} patches in {train_scenes} training / {test_scenes} "
                             f"test scenes; probe more scenes")
        w = fit_probe(xa[sa], ya, classes)
        out[name] = {"train": probe_accuracy(w, xa[sa], ya), "test": probe_accuracy(w, xb[sb], yb),
                     "chance": chance(yb), "patches": int(len(yb))}
    return out


def format_probes(scores: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'probe':<8} {'test':>6} {'chance':>7} {'train':>6} {'test patches':>13}"]
    for name, s in scores.items():
        lines.append(f"{name:<8} {s['test']:6.3f} {s['chance']:7.3f} {s['train']:6.3f} "
                     f"{s['patches']:13d}")
    return "\n".join(lines)


def _probe(args) -> int:
    import duet_jax
    model = duet_jax.load_llava(args.checkpoint, dtype="float32")
    print(format_probes(probe_model(model, args.train_scenes, args.test_scenes, args.seed)))
    return 0


def main(argv=None) -> int:
    p = Parser(prog="python -m duet_jax.miniature.probe", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a miniature checkpoint dir (e.g. duet_jax/miniature/"
                                      "pretrained, or a run's final/)")
    p.add_argument("--train-scenes", type=int, default=800)
    p.add_argument("--test-scenes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the scenes' data seed")
    args = p.parse_args(argv)
    for flag in ("train_scenes", "test_scenes"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    quiet_libraries()
    return guarded(_probe, args)


if __name__ == "__main__":
    raise SystemExit(main())
