"""Question files, prompts and answer lines (docs/EVAL.md §0, §5, §7)."""
import json

import pytest

from duet_jax.evaluation import questions as qmod
from duet_jax.evaluation.scoring import ScoreError

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
          "gives helpful, detailed, and polite answers to the user's questions.")


def test_llava_prompt_exact(files):
    path = files.jsonl("llava_pope_test.jsonl", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
         "text": f"Is there a snowboard in the image?\n{SHORT}", "category": "adversarial"}])
    (q,) = qmod.load_questions("pope", path)
    assert qmod.build_prompt(q) == (
        f"{VICUNA} USER: <image>\nIs there a snowboard in the image?\n{SHORT} ASSISTANT:")
    assert q.max_new_tokens == 128 and q.category == "adversarial" and q.num_images == 1
    record = qmod.answer_record(q, "Yes", model_id="llava-v1.5-7b")
    assert set(record) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert record["prompt"] == q.text and record["metadata"] == {} and record["question_id"] == 1


def test_malformed_jsonl_names_file_and_line(files):
    path = files.jsonl("q.jsonl", [{"question_id": 1, "image": "a.jpg", "text": "t"}, "{not json",
                                   {"question_id": 3, "image": "c.jpg", "text": "t"}])
    with pytest.raises(ScoreError, match=r"q\.jsonl:2: malformed JSON line"):
        qmod.load_questions("gqa", path)
    path = files.jsonl("q2.jsonl", [{"question_id": 1, "image": "a.jpg"}])
    with pytest.raises(ScoreError, match=r"q2\.jsonl:1: missing field 'text'"):
        qmod.load_questions("gqa", path)


def test_sqa_prompt_and_answer_prompt(files):
    path = files.json("llava_test_CQM-A.json", [
        {"id": "4", "image": "4/image.png",
         "conversations": [{"from": "human", "value": "<image>\nContext: x\nWhich?\nA. a\nB. b"},
                           {"from": "gpt", "value": "A"}]},
        {"id": "7", "conversations": [{"from": "human", "value": " Which?\nA. a\nB. b "},
                                      {"from": "gpt", "value": "B"}]}])
    img, txt = qmod.load_questions("sqa", path)
    assert img.text == f"Context: x\nWhich?\nA. a\nB. b\n{LETTER}"
    assert img.answer_prompt == "<image>\n" + img.text and img.num_images == 1
    assert qmod.build_prompt(img) == f"{VICUNA} USER: <image>\n{img.text} ASSISTANT:"
    # Text-only problem: no image placeholder anywhere, no <image> in the answer prompt.
    assert txt.num_images == 0 and txt.image is None and "<image>" not in txt.answer_prompt
    assert qmod.build_prompt(txt) == f"{VICUNA} USER: Which?\nA. a\nB. b\n{LETTER} ASSISTANT:"
    assert txt.max_new_tokens == 1024 and txt.original_text == "Which?\nA. a\nB. b"


def test_video_prompt_and_answer_line(files):
    files.json("MSVD_Zero_Shot_QA/test_q.json", [
        {"video_name": "vid1", "question": "what is the man doing?", "question_id": "v_0"},
        {"video_name": "vid2", "question": "who?", "question_id": "v_1"}])
    files.json("MSVD_Zero_Shot_QA/test_a.json", [{"question_id": "v_0", "answer": "cook", "answer_type": 0}])
    questions = qmod.load_questions("video", files.root + "/MSVD_Zero_Shot_QA")
    assert [q.question_id for q in questions] == ["v_0"]  # no GT answer -> skipped, as officially
    (q,) = questions
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
              "gives helpful, detailed, and polite answers to the human's questions.")
    assert qmod.build_prompt(q) == f"{system} USER: {'<image>' * 8}\nwhat is the man doing? ASSISTANT:"
    assert qmod.answer_record(q, "cooking", model_id="m") == {
        "id": "v_0", "question": "what is the man doing?", "answer": "cook", "pred": "cooking"}
    assert qmod.clean_output("  cooking</s> ", "video") == "cooking"
    assert qmod.clean_output("  x</s> ", "gqa") == "x</s>"


def test_seed_video_frame_path():
    q = qmod.Question(benchmark="seed", question_id=1, text="t", answer_prompt="t",
                      image="SEED-Bench-video-image/11_P03_cereals.png", num_images=1,
                      category=None, original_text="t", max_new_tokens=128)
    # Only the second '_' piece is used; rstrip('.png') strips characters, not a suffix.
    assert qmod.resolve_image_path("/d", q) == (
        "/d/SEED-Bench-video-image/v1_video/task11/kitchen_8_frame/P03/4.png")
    q = qmod.Question(**{**q.__dict__, "image": "SEED-Bench-video-image/10_12ping.png"})
    assert qmod.resolve_image_path("/d", q) == (
        "/d/SEED-Bench-video-image/v1_video/task10/ssv2_8_frame/12pi/4.png")
    plain = qmod.Question(**{**q.__dict__, "image": "SEED-Bench-image/1.jpg"})
    assert qmod.resolve_image_path("/d", plain) == "/d/SEED-Bench-image/1.jpg"


def test_answer_writer_round_trip(files, tmp_path):
    path = files.jsonl("q.jsonl", [{"question_id": i, "image": f"{i}.jpg", "text": f"Q{i}\n{SHORT}"}
                                   for i in range(3)])
    questions = qmod.load_questions("gqa", path)
    out = str(tmp_path / "answers.jsonl")
    with qmod.AnswerWriter(out) as writer:
        for q in questions[:2]:
            writer.write(qmod.answer_record(q, f"ans{q.question_id}", model_id="m"))
    lines = [json.loads(line) for line in open(out)]
    assert [line["text"] for line in lines] == ["ans0", "ans1"]
    assert len({line["answer_id"] for line in lines}) == 2
    done = qmod.answered_keys(out)
    assert [qmod.question_key(q) in done for q in questions] == [True, True, False]


def test_unknown_benchmark(files):
    with pytest.raises(ScoreError, match="unknown benchmark"):
        qmod.load_questions("vqav2", files.jsonl("q.jsonl", []))
