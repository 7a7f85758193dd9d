"""LLaVA-JSON validation, the bundled tiny data set, sharded shuffling and resumable batches."""
from __future__ import annotations

import copy
import filecmp
import json
import os

import numpy as np
import pytest

from duet_jax.data import make_tiny_dataset
from duet_jax.data.llava_json import RecordError, SampleEncoder, load_records, validate_record
from duet_jax.data.loader import (EpochSchedule, LoaderConfig, TrainBatchIterator,
                                  default_length_buckets, make_train_iterator)
from duet_jax.data.tokenize import encode_training
from tests.data.conftest import CROP
from tests.helpers.tokenizer import image_token_id

ASSETS = os.path.dirname(make_tiny_dataset.__file__) + "/assets"
TINY_JSON = os.path.join(ASSETS, "tiny_llava.json")
SEQ = 4          # image tokens per image in these tests
MAX_LEN = 128

GOOD = {"id": "x", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}


def _bad(mutate):
    record = copy.deepcopy(GOOD)
    mutate(record)
    return record


BAD_RECORDS = [
    ("not a dict", "expected a JSON object"),
    (_bad(lambda r: r.pop("conversations")), "'conversations' must be"),
    (_bad(lambda r: r["conversations"][1].update({"from": "bot"})), "turn 1: 'from'"),
    (_bad(lambda r: r["conversations"][1].update({"value": 3})), "turn 1: 'value'"),
    (_bad(lambda r: r["conversations"].append({"from": "gpt", "value": "B"})), "alternate"),
    (_bad(lambda r: r.pop("image")), "without 'image'"),
    (_bad(lambda r: r["conversations"][0].update({"value": "Q?"})), "exactly one '<image>'"),
    (_bad(lambda r: r["conversations"][1].update({"value": "<image>"})), "exactly one '<image>'"),
    (_bad(lambda r: r.update({"image": ["a.png", "b.png"]})), "'image' must be"),
    ({"conversations": [{"from": "gpt", "value": "hi"}]}, "no human turn"),
]


@pytest.mark.parametrize("record,message", BAD_RECORDS)
def test_malformed_records_name_their_index(record, message, tmp_path):
    validate_record(GOOD, 0)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, GOOD, record]))
    with pytest.raises(RecordError, match=f"^record 2: .*{message}"):
        load_records(str(path))


def test_plain_template_needs_image_and_two_turns():
    validate_record(GOOD, 0, template="plain")
    three = _bad(lambda r: r["conversations"].extend([{"from": "human", "value": "Q"}]))
    with pytest.raises(RecordError, match="record 5: the plain"):
        validate_record(three, 5, template="plain")


def test_check_images_names_missing_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD]))
    with pytest.raises(RecordError, match=r"record 0: image file not found: .*a\.png"):
        load_records(str(path), image_folder=str(tmp_path), check_images=True)


def test_bundled_dataset_is_small_valid_and_reproducible(tmp_path):
    records = load_records(TINY_JSON, image_folder=ASSETS, check_images=True)
    with_image = [r for r in records if "image" in r]
    assert len(with_image) == 16 and len(records) - len(with_image) == 8
    assert any(len(r["conversations"]) > 2 for r in with_image)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ASSETS) for f in fs)
    assert total < 300_000
    regenerated = make_tiny_dataset.generate(str(tmp_path / "again"))
    assert filecmp.cmp(regenerated, TINY_JSON, shallow=False)
    for name in [r["image"] for r in with_image] + ["demo.png"]:
        assert filecmp.cmp(os.path.join(tmp_path, "again", name), os.path.join(ASSETS, name),
                           shallow=False)


@pytest.mark.parametrize("n,batch,procs", [(24, 3, 2), (23, 2, 3), (10, 5, 1)])
def test_schedule_shards_are_disjoint_and_cover_the_epoch(n, batch, procs):
    def schedules(seed):
        return [EpochSchedule(n, batch, seed=seed, shuffle=True, process_index=p,
                              process_count=procs) for p in range(procs)]
    a, b, other = schedules(0), schedules(0), schedules(1)
    steps = a[0].steps_per_epoch
    assert steps == n // (batch * procs)
    for epoch in range(2):
        seen = [i for s in range(steps) for sched in a
                for i in sched.step_indices(epoch * steps + s)]
        assert len(seen) == len(set(seen)) == steps * batch * procs     # disjoint
        assert set(seen) <= set(range(n))
        if n % (batch * procs) == 0:
            assert set(seen) == set(range(n))                           # covering
        again = [i for s in range(steps) for sched in b for i in sched.step_indices(epoch * steps + s)]
        assert seen == again                                            # deterministic
    orders = [a[0].epoch_order(e).tolist() for e in range(3)]
    assert orders[0] != orders[1] != orders[2]                          # reshuffled per epoch
    assert orders[0] != other[0].epoch_order(0).tolist()                # seed matters


def test_union_of_process_batches_is_the_single_process_batch():
    one = EpochSchedule(30, 6, seed=3, shuffle=True)
    two = [EpochSchedule(30, 3, seed=3, shuffle=True, process_index=p, process_count=2)
           for p in range(2)]
    for step in range(7):
        joined = np.concatenate([s.step_indices(step) for s in two])
        np.testing.assert_array_equal(joined, one.step_indices(step))


@pytest.fixture(scope="module")
def encoder(tokenizer, processor):
    return SampleEncoder(tokenizer, processor, image_folder=ASSETS, template="vicuna_v1",
                         image_token_index=image_token_id(tokenizer), image_seq_length=SEQ,
                         max_length=MAX_LEN)


@pytest.fixture(scope="module")
def records():
    return load_records(TINY_JSON)


def _config(**kw):
    base = dict(batch_size=4, length_buckets=(64, 96, MAX_LEN), seed=7, num_threads=2, prefetch=3)
    base.update(kw)
    return LoaderConfig(**base)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_batches_have_static_bucketed_shapes(records, encoder, tokenizer):
    it = TrainBatchIterator(records, encoder, _config())
    image_id = image_token_id(tokenizer)
    for batch in _take(it, it.steps_per_epoch):
        b, length = batch["input_ids"].shape
        assert b == 4 and length in (64, 96, MAX_LEN)
        assert batch["pixel_values"].shape == (4, 3, CROP, CROP)
        assert batch["pixel_values"].dtype == np.float32 and batch["has_image"].dtype == bool
        for key in ("input_ids", "attention_mask", "labels"):
            assert batch[key].dtype == np.int32 and batch[key].shape == (4, length)
        lengths = batch["attention_mask"].sum(1)
        assert length == min(bk for bk in (64, 96, MAX_LEN) if bk >= lengths.max())
        for row in range(4):
            valid = batch["attention_mask"][row] == 1
            assert valid[:lengths[row]].all()                                   # right padding
            assert (batch["labels"][row][~valid] == -100).all()
            assert (batch["input_ids"][row][~valid] == tokenizer.pad_token_id).all()
            n_img = (batch["input_ids"][row] == image_id).sum()
            assert n_img == (SEQ if batch["has_image"][row] else 0)
            if not batch["has_image"][row]:
                assert (batch["pixel_values"][row] == 0).all()
    assert it.stats["samples"] == 24 and it.stats["text_only"] == 8


def test_batch_rows_are_the_scheduled_samples(records, encoder):
    it = TrainBatchIterator(records, encoder, _config())
    for step, batch in enumerate(_take(it, 2)):
        for row, index in enumerate(it.schedule.step_indices(step)):
            sample = encoder(records[index], int(index))
            n = len(sample.example.input_ids)
            assert batch["attention_mask"][row].sum() == n
            np.testing.assert_array_equal(batch["input_ids"][row, :n], sample.example.input_ids)
            np.testing.assert_array_equal(batch["labels"][row, :n], sample.example.labels)
            assert batch["has_image"][row] == ("image" in records[index])
            if sample.pixel_values is not None:
                np.testing.assert_array_equal(batch["pixel_values"][row], sample.pixel_values)


def test_resume_from_state_gives_the_identical_remaining_sequence(records, encoder):
    it = TrainBatchIterator(records, encoder, _config())
    _take(it, 4)
    state = json.loads(json.dumps(it.get_state()))          # must survive a JSON checkpoint
    assert (state["epoch"], state["position"]) == (0, 4)
    rest = _take(it, 5)                                      # crosses into epoch 1
    assert it.get_state()["epoch"] == 1
    resumed = TrainBatchIterator(records, encoder, _config(num_threads=0), state=state)
    _assert_same(rest, _take(resumed, 5))
    assert resumed.stats == it.stats
    fresh = TrainBatchIterator(records, encoder, _config(num_threads=1, prefetch=1))
    _assert_same(_take(fresh, 9)[4:], rest)                 # prefetch depth never changes order


def test_state_from_another_data_setup_is_rejected(records, encoder):
    state = TrainBatchIterator(records, encoder, _config()).get_state()
    with pytest.raises(ValueError, match="seed=7"):
        TrainBatchIterator(records, encoder, _config(seed=8), state=state)


def test_state_of_two_processes_resumes_in_one(records, encoder):
    """A 2-process run's state (process 0's) resumes a 1-process loader of the same global
    batch at the same global step; the per-process halves joined are its batches."""
    halves = [TrainBatchIterator(records, encoder, _config(batch_size=2, process_index=p,
                                                             process_count=2, num_threads=0))
              for p in range(2)]
    for it in halves:
        _take(it, 3)
    state = json.loads(json.dumps(halves[0].get_state()))
    one = TrainBatchIterator(records, encoder, _config(num_threads=0), state=state)
    for _ in range(2):
        joined = one.__next__()
        parts = [next(it) for it in halves]
        np.testing.assert_array_equal(joined["pixel_values"],
                                      np.concatenate([p["pixel_values"] for p in parts]))
    with pytest.raises(ValueError, match="global_batch=4"):
        TrainBatchIterator(records, encoder, _config(batch_size=8), state=state)


def test_finite_epochs_stop(records, encoder):
    it = TrainBatchIterator(records, encoder, _config(num_epochs=2, batch_size=8))
    assert len(list(it)) == 2 * 3


def test_truncation_is_counted(records, tokenizer, processor):
    small = SampleEncoder(tokenizer, processor, image_folder=ASSETS, template="vicuna_v1",
                          image_token_index=image_token_id(tokenizer), image_seq_length=SEQ,
                          max_length=56)
    expected = sum(encode_training([(t["from"], t["value"]) for t in r["conversations"]],
                                   tokenizer, template="vicuna_v1", has_image="image" in r,
                                   image_token_index=0, image_seq_length=SEQ,
                                   max_length=56).truncated for r in records)
    assert 0 < expected < len(records)
    it = TrainBatchIterator(records, small, _config(length_buckets=(), num_epochs=1))
    batches = list(it)
    assert it.stats["truncated"] == expected
    assert all(b["input_ids"].shape[1] in default_length_buckets(56) for b in batches)


def test_missing_image_during_iteration_names_record(tmp_path, tokenizer, processor):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD] * 2))
    it = make_train_iterator(str(path), str(tmp_path), tokenizer, processor, template="vicuna_v1",
                             image_token_index=image_token_id(tokenizer), image_seq_length=SEQ,
                             max_length=MAX_LEN, config=_config(batch_size=2, num_threads=0),
                             check_images=False)
    with pytest.raises(FileNotFoundError, match=r"record [01]: image file not found: .*a\.png"):
        next(it)
