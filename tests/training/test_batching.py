"""Host-side static layouts (docs/ALGORITHM.md §3.6): the lengths predicted on the host are the
lengths the reduced forward produces, so tight Stage-2 buffers cut nothing and give the
loss of untruncated buffers; pass-through samples follow the training query sets."""
import functools

import jax
import numpy as np
import pytest

from duet_jax.models.llava import LlavaModel
from duet_jax.reduction import ReductionConfig, Stage1Config, Stage2Config
from duet_jax.training.batching import (StepLayout, agree, local_needs, passthrough, plan_layout,
                                        sample_lengths, stack)
from duet_jax.training.step import mean_loss
from tests.training.conftest import IMAGE_FOLDER, TINY_JSON


@pytest.fixture(scope="module")
def setting(assets_dir):
    from transformers import AutoTokenizer
    from duet_jax.data import LoaderConfig, load_image_processor, make_train_iterator
    from duet_jax.training.config import RandomModelConfig
    from duet_jax.training.random_model import random_llava_config

    tok = AutoTokenizer.from_pretrained(assets_dir, local_files_only=True)
    cfg = random_llava_config(RandomModelConfig(vision_layers=2, text_layers=3), vocab_size=len(tok),
                              image_token_index=tok.convert_tokens_to_ids("<image>"))
    it = make_train_iterator(TINY_JSON, IMAGE_FOLDER, tok, load_image_processor(assets_dir),
                             template="vicuna_v1", image_token_index=cfg.image_token_index,
                             image_seq_length=cfg.image_seq_length, max_length=128,
                             config=LoaderConfig(batch_size=6, num_threads=0, seed=3,
                                                 length_buckets=(128,)))
    batch = dict(next(it))
    img = np.flatnonzero(batch["has_image"])
    assert len(img) >= 2 and not batch["has_image"].all()
    # One image sample without any supervised token: LLaVA's tokenization-mismatch case.
    batch["labels"] = batch["labels"].copy()
    batch["labels"][img[0]] = -100
    model = LlavaModel(cfg)
    return model, jax.jit(model.init)(jax.random.PRNGKey(1)), batch, img[0]


def _reduction(queries):
    return ReductionConfig(f"t-{queries}", Stage1Config(6, 3, 2),
                           Stage2Config((1, 2), (0.5, 0.0), queries=queries))


@pytest.mark.parametrize("queries", ["all", "last"])
def test_passthrough_is_the_model_query_set_being_empty(setting, queries):
    """Host flags == no row in `train_query_mask` of the spliced sequence (what the model uses)."""
    from duet_jax.reduction import train_query_mask

    model, params, batch, masked = setting
    cfg = model.config
    k = _reduction(queries).stage1.output_size(cfg.vision.num_patches)
    feats = jax.numpy.zeros((len(batch["has_image"]), k, cfg.text.hidden_size))
    seq = model.splice(params, batch["input_ids"], feats, batch["attention_mask"],
                       batch["labels"], False)
    start = np.where(np.asarray(seq.has_image), np.asarray(seq.image_start), -1)
    qmask, _ = train_query_mask(seq.labels, seq.valid, start, k, queries)
    through = passthrough(batch, cfg.image_token_index, cfg.image_seq_length, queries)
    np.testing.assert_array_equal(through, ~np.asarray(qmask).any(axis=1))
    expected = ~batch["has_image"]
    if queries == "last":   # no answer span at all: nothing to rank with
        expected = expected | (np.arange(len(through)) == masked)
    np.testing.assert_array_equal(through, expected)


def test_tight_buffers_match_the_forward(setting):
    model, params, batch, masked = setting
    red = _reduction("last")    # the masked image sample passes through, the others drop
    predicted = sample_lengths(batch, model.config, red)                     # [S+1, B]
    assert predicted[-1][masked] == predicted[0][masked]

    arrays = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    length = batch["input_ids"].shape[1]
    tight = plan_layout(agree(local_needs([batch], model.config, red)), model.config, red, 1)
    assert tight.segment_lengths[-1] == predicted[-1].max() < length

    @functools.partial(jax.jit, static_argnums=0)
    def run(segment_lengths):
        out = model.forward(params, arrays["input_ids"], arrays["pixel_values"],
                            arrays["attention_mask"], arrays["labels"], red, False, train=True,
                            segment_lengths=segment_lengths)
        loss = mean_loss(model, params, arrays, red,
                         StepLayout(length, False, segment_lengths))
        return [s.valid.sum(1) for s in out.segments], out.sequence.valid.sum(1), loss

    loose_segments, loose_final, loose_loss = run(None)       # buffers never shrink
    tight_segments, tight_final, tight_loss = run(tight.segment_lengths)
    for s, seg in enumerate(loose_segments):
        np.testing.assert_array_equal(np.asarray(seg), predicted[s], err_msg=f"segment {s}")
        np.testing.assert_array_equal(np.asarray(tight_segments[s]), predicted[s])
    np.testing.assert_array_equal(np.asarray(loose_final), predicted[-1])
    np.testing.assert_allclose(float(tight_loss), float(loose_loss), rtol=1e-5)


def test_layout_rounds_up_and_never_grows(setting):
    model, _, batch, _ = setting
    red = _reduction("all")
    needs = local_needs([batch, batch], model.config, red)
    layout = plan_layout(needs, model.config, red, 32)
    assert layout.length == batch["input_ids"].shape[1] and not layout.images_in_every_sample
    segs = layout.segment_lengths
    assert all(s % 32 == 0 or s == layout.length for s in segs)
    assert list(segs) == sorted(segs, reverse=True) and segs[0] <= layout.length
    assert all(s >= n for s, n in zip(segs, needs[4:]))
    # Without Stage 2 there are no buffers to plan; all-image batches shrink after Stage 1.
    only_images = {k: v[batch["has_image"]] for k, v in batch.items()}
    no_stage2 = ReductionConfig("s1", Stage1Config(6, 3, 2), None)
    assert plan_layout(local_needs([only_images], model.config, no_stage2), model.config,
                       no_stage2, 8) == StepLayout(batch["input_ids"].shape[1], True, None)


def test_stack_pads_micro_batches_to_one_length(setting):
    _, _, batch, _ = setting
    short = {k: (v[:, :100] if v.ndim == 2 else v) for k, v in batch.items()}
    out = stack([batch, short], 128, pad_id=7)
    assert out["input_ids"].shape == (2, 6, 128) and out["pixel_values"].shape[:2] == (2, 6)
    assert (out["input_ids"][1, :, 100:] == 7).all() and (out["labels"][1, :, 100:] == -100).all()
    assert (out["attention_mask"][1, :, 100:] == 0).all()


def test_mixed_batch_shrinks_by_stage1(setting):
    """A batch with text-only rows still gets the tight post-Stage-1 buffer."""
    model, params, batch, _ = setting
    red = _reduction("all")
    layout = plan_layout(local_needs([batch], model.config, red), model.config, red, 8)
    assert not layout.images_in_every_sample
    assert layout.splice_length is not None and layout.splice_length < layout.length
    assert layout.splice_length >= int(sample_lengths(batch, model.config, red)[0].max())


def test_text_only_step_skips_the_tower(setting):
    """A step without images runs no tower and no reduction, and its loss and gradients equal
    those of the same rows run with the tower on the loader's zero pixels (the old step)."""
    from duet_jax.training.step import accumulate_gradients

    model, params, batch, _ = setting
    text = {k: v[~batch["has_image"]] for k, v in batch.items()}
    red = _reduction("all")
    layout = plan_layout(local_needs([text], model.config, red), model.config, red, 8)
    assert not layout.any_image and layout.segment_lengths is None
    assert plan_layout(local_needs([batch], model.config, red), model.config, red, 8).any_image
    stacked = {k: text[k][None] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    with_tower = StepLayout(layout.length, False, None, layout.splice_length)

    def grads(layout, reduction):
        fn = functools.partial(accumulate_gradients, model=model, reduction=reduction,
                               groups=("projector", "text"), layout=layout)
        return fn, jax.jit(fn)(params, stacked)

    fn, (g_text, m_text) = grads(layout, red)
    fn_tower, (g_tower, m_tower) = grads(with_tower, None)
    np.testing.assert_allclose(float(m_text["loss"]), float(m_tower["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_text), jax.tree.leaves(g_tower)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # The patch embedding is the tower's only convolution: the text-only program has none.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(fn)(params, stacked))
    assert "conv_general_dilated" in str(jax.make_jaxpr(fn_tower)(params, stacked))
