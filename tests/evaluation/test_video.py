"""Video QA (docs/EVAL.md §7, §10): judge-reply aggregation quirks and the lexical proxy."""
import pytest

from duet_jax.evaluation.scoring import ScoreError, video


def _reply(pred, score, qa=None):
    return [{"pred": pred, "score": score}, qa or {"q": "what?", "a": "cat", "pred": "a cat"}]


def test_aggregation_quirks():
    replies = {
        "1": _reply("yes", 5),
        "2": _reply("no", 0),
        "3": _reply("Yes", 4.8),       # float score -> int() -> 4
        "4": _reply("unknown", 2),     # 'no' substring -> no
        "5": _reply("None", 1),        # 'no' substring -> no
        "6": _reply("maybe", 3),       # neither yes nor no
        "7": _reply("yes", "4.5"),     # int('4.5') raises: rest skipped, still counted
        "8": _reply("yes", "N/A"),     # same
        "9": [{"score": 3}, {}],       # score counted, then 'pred' missing -> skipped
        "10": ["not a dict", {}],      # fails at once: counted only
        "11": _reply("YES it is", " 2 "),  # int(' 2 ') == 2
    }
    out = video.aggregate_judge(replies)
    assert out["judge_count"] == 11
    assert (out["yes"], out["no"]) == (3, 3)
    assert out["accuracy"] == pytest.approx(50.0)
    assert out["average_score"] == pytest.approx((5 + 0 + 4 + 2 + 1 + 3 + 3 + 2) / 11)


def test_aggregation_no_yes_no_is_null():
    out = video.aggregate_judge({"1": _reply("maybe", 3)})
    assert out["accuracy"] is None and out["average_score"] == 3.0 and out["deviations"]


@pytest.mark.parametrize("gt, pred, hit", [
    ("cat", "cat", True), ("cat", "A cat.", True), ("cat", "The cat is sleeping", True),
    ("cat", "category", False),            # whole tokens only
    ("two", "There are 2 dogs", True),     # number words normalise
    ("play guitar", "he plays guitar", False), ("play guitar", "they play guitar now", True),
    ("dog", "no", False), ("the", "", True), ("the", "nothing", False),
])
def test_lexical_hit(gt, pred, hit):
    assert video.lexical_hit(gt, pred) is hit


def test_dataset_name():
    assert video.dataset_name("/data/MSVD_Zero_Shot_QA/") == "msvd"
    assert video.dataset_name("TGIF_Zero_Shot_QA") == "tgif"


def _dataset(files, name="MSRVTT_Zero_Shot_QA"):
    files.json(f"{name}/test_q.json", [{"video_name": f"video{i}", "question": f"q{i}?", "question_id": f"v{i}"}
                                       for i in range(3)])
    files.json(f"{name}/test_a.json", [{"question_id": f"v{i}", "answer": a, "answer_type": 0}
                                       for i, a in enumerate(["cat", "run", "red car"])])
    return f"{files.root}/{name}"


def _answers(files, preds, ids=("v0", "v1", "v2"), gts=("cat", "run", "red car")):
    return files.jsonl("pred.json", [{"id": i, "question": "q?", "answer": a, "pred": p}
                                     for i, a, p in zip(ids, gts, preds)])


def test_score_lexical_only(files):
    folder = _dataset(files)
    block = video.score(_answers(files, ["a cat", "walking", "a red car"]), folder)
    assert list(block) == ["msrvtt"]
    entry = block["msrvtt"]
    assert entry["lexical_accuracy"] == pytest.approx(100 * 2 / 3)
    assert entry["judge"] is None and entry["accuracy"] is None


@pytest.mark.parametrize("combined", [False, True])
def test_score_with_judge_replies(files, combined):
    folder = _dataset(files)
    replies = {"v0": _reply("yes", 5), "v1": _reply("no", 1), "v2": _reply("yes", 4)}
    if combined:
        path = files.json("judge_qwen.json", replies)
    else:
        for key, reply in replies.items():
            files.json(f"qwen_replies/{key}.json", reply)
        path = files.root + "/qwen_replies"
    entry = video.score(_answers(files, ["cat", "x", "red car"]), folder, judge_replies=path)["msrvtt"]
    assert entry["accuracy"] == pytest.approx(100 * 2 / 3)
    assert entry["average_score"] == pytest.approx(10 / 3)
    assert entry["judge"] == ("judge_qwen" if combined else "qwen_replies")


def test_judge_replies_must_cover_answers(files):
    folder = _dataset(files)
    path = files.json("judge.json", {"v0": _reply("yes", 5), "v1": _reply("no", 1)})
    with pytest.raises(ScoreError, match="1 answer.*no judge reply"):
        video.score(_answers(files, ["cat", "x", "red car"]), folder, judge_replies=path)


def test_misaligned_gt_and_unknown_id(files):
    folder = _dataset(files)
    with pytest.raises(ScoreError, match="misaligned"):
        video.score(_answers(files, ["a", "b", "c"], gts=("cat", "walk", "red car")), folder)
    with pytest.raises(ScoreError, match="not in"):
        video.score(_answers(files, ["a"], ids=("v9",), gts=("cat",)), folder)
