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
  letter questions of POPE need,
* letter identity from each letter's mean feature (its patches pooled): what
  an LM head attending evenly to a letter's patches would read.

Each score comes with its chance level (the most frequent class of the test
patches). A tower change is worth the LM stages only where it moves these.

    python -m duet_jax.miniature.probe CHECKPOINT --captions DATA_DIR [--split test]

probes the LM the same way from the other side: every evaluation question asked
with its scene's caption in place of the picture (the text stage's format),
scored per kind of question by the official rules. A kind the LM cannot answer
from a caption that names every object it will not answer from the picture.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from duet_jax.cli import Parser, guarded, quiet_libraries
from duet_jax.miniature import dataset, evaluate, tasks
from duet_jax.miniature.scenes import COLORS, LETTERS, SHAPES
from duet_jax.miniature.tower import feature_layer, make_batch

PROBE_STEPS = 500
PROBE_LR = 0.05
PROBE_L2 = 1e-4
HELD_OUT = "probe"          # the scene stream the probes are scored on (no split uses it)


def patch_features(model, split: str, count: int, seed: int = 0,
                   batch: int = 32) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features [P, D], colour [P], kind [P], scene [P]) over every patch of scenes
    0..count-1 of `split`: the feature layer the projector reads, layer-normalised without
    parameters, each patch's labels (`tower.patch_labels`) and its scene's index."""
    cfg = model.config
    run = jax.jit(lambda pixels: feature_layer(model.module.vision, cfg.feature_layer_index,
                                               model.params["vision"], pixels))
    feats, colours, kinds = [], [], []
    for lo in range(0, count, batch):
        b = make_batch(range(lo, min(lo + batch, count)), model.image_processor,
                       cfg.vision.patch_size, seed, split)
        out = np.asarray(run(jnp.asarray(b["pixels"])))
        feats.append(out.reshape(-1, out.shape[-1]))
        colours.extend(b["colour"])
        kinds.extend(b["kind"])
    scenes = np.repeat(np.arange(count), len(colours[0]))
    return np.concatenate(feats), np.concatenate(colours), np.concatenate(kinds), scenes


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


def pool_objects(x: np.ndarray, kind: np.ndarray, scene: np.ndarray,
                 select: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean features [O, D], kind [O]) of each object among the `select`ed patches: the
    patches of one kind in one scene (a scene's two letters always differ). This is what
    one attention head of the LM reads when it attends evenly to an object's patches."""
    keys = scene[select].astype(np.int64) * 256 + kind[select]
    uniq, group = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]), np.float64)
    np.add.at(sums, group, x[select])
    return (sums / np.bincount(group)[:, None]).astype(np.float32), (uniq % 256).astype(kind.dtype)


def probe_rows(name: str, data: tuple) -> Tuple[np.ndarray, np.ndarray, int]:
    """(x, y, classes) of probe `name` on `patch_features` output `data`."""
    x, colour, kind, scene = data
    n_shapes = len(SHAPES)
    if name == "colour":                        # object patches, 5-way
        sel = kind > 0
        return x[sel], colour[sel] - 1, len(COLORS)
    if name == "shape":
        sel = (kind > 0) & (kind <= n_shapes)
        return x[sel], kind[sel] - 1, n_shapes
    if name == "letter":
        sel = kind > n_shapes
        return x[sel], kind[sel] - n_shapes - 1, len(LETTERS)
    if name == "letter object":                 # one row per letter: its patches' mean
        pooled, k = pool_objects(x, kind, scene, kind > n_shapes)
        return pooled, k - n_shapes - 1, len(LETTERS)
    raise ValueError(f"unknown probe {name!r}; use one of {PROBES}")


PROBES = ("colour", "shape", "letter", "letter object")


def probe_model(model, train_scenes: int = 800, test_scenes: int = 300,
                seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{probe: {"train", "test", "chance", "rows"}} for each of PROBES on a loaded
    miniature (`duet_jax.load_llava`): patches of `train_scenes` training scenes fit the
    probe, those of `test_scenes` held-out scenes score it."""
    train = patch_features(model, "train", train_scenes, seed)
    test = patch_features(model, HELD_OUT, test_scenes, seed)
    out = {}
    for name in PROBES:
        (xa, ya, classes), (xb, yb, _) = probe_rows(name, train), probe_rows(name, test)
        if not len(ya) or not len(yb):
            raise ValueError(f"no {name} rows in {train_scenes} training / {test_scenes} "
                             f"test scenes; probe more scenes")
        w = fit_probe(xa, ya, classes)
        out[name] = {"train": probe_accuracy(w, xa, ya), "test": probe_accuracy(w, xb, yb),
                     "chance": chance(yb), "rows": int(len(yb))}
    return out


def format_probes(scores: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'probe':<14} {'test':>6} {'chance':>7} {'train':>6} {'test rows':>10}"]
    for name, s in scores.items():
        lines.append(f"{name:<14} {s['test']:6.3f} {s['chance']:7.3f} {s['train']:6.3f} "
                     f"{s['rows']:10d}")
    return "\n".join(lines)


def caption_prompts(data_dir: str, split: str, benchmark: str) -> list:
    """[(Question, prompt)]: each question of `benchmark` with its image's caption in place
    of the picture, as the text stage (`tasks.text_record`) shows scenes to the LM."""
    seed = dataset.read_manifest(data_dir).seed
    caption = lambda image: tasks.caption(dataset.scene_of(image, seed)).answer  # noqa: E731
    return [(q, tasks.caption_opening(caption(q.image)) + q.text)
            for q in evaluate.benchmark_questions(data_dir, split, benchmark)]


def caption_scores(model, data_dir: str, split: str, out_dir: str,
                   batch_size: int = 16) -> Dict[str, Dict[str, float]]:
    """`evaluate.category_scores` of the LM answering every question of `split` from the
    caption (`caption_prompts`, greedy, no image); answer files go to `out_dir`."""
    from duet_jax.evaluation.questions import AnswerWriter, answer_record
    os.makedirs(out_dir, exist_ok=True)
    for benchmark in evaluate.BENCHMARKS:
        pairs = caption_prompts(data_dir, split, benchmark)
        with AnswerWriter(os.path.join(out_dir, f"{benchmark}.jsonl")) as writer:
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i:i + batch_size]
                answers = model.generate([p for _, p in chunk], [None] * len(chunk),
                                         max_new_tokens=evaluate.MAX_NEW_TOKENS)
                for k, ((q, _), a) in enumerate(zip(chunk, answers), start=i):
                    writer.write(answer_record(q, a, "caption-probe", f"caption-{k}"))
    return evaluate.category_scores(data_dir, split, out_dir)


def format_caption_scores(scores: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'from the caption':<16} {'n':>4} {'score':>6}"]
    lines += [f"{kind:<16} {s['n']:4d} {s['score']:6.1f}" for kind, s in scores.items()]
    return "\n".join(lines)


def _probe(args) -> int:
    import tempfile
    import duet_jax
    model = duet_jax.load_llava(args.checkpoint, dtype="float32")
    if args.captions:
        with tempfile.TemporaryDirectory() as out:
            print(format_caption_scores(caption_scores(model, args.captions, args.split, out)))
        return 0
    print(format_probes(probe_model(model, args.train_scenes, args.test_scenes, args.seed)))
    return 0


def main(argv=None) -> int:
    p = Parser(prog="python -m duet_jax.miniature.probe", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a miniature checkpoint dir (e.g. duet_jax/miniature/"
                                      "pretrained, or a run's final/)")
    p.add_argument("--train-scenes", type=int, default=800)
    p.add_argument("--test-scenes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the scenes' data seed")
    p.add_argument("--captions", metavar="DATA_DIR",
                   help="probe the LM instead: the questions of DATA_DIR (a miniature data "
                        "set, e.g. .cache/miniature/data) asked with their scenes' captions")
    p.add_argument("--split", default="test", choices=dataset.EVAL_SPLITS)
    args = p.parse_args(argv)
    for flag in ("train_scenes", "test_scenes"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    quiet_libraries()
    return guarded(_probe, args)


if __name__ == "__main__":
    raise SystemExit(main())
