"""A question longer than the budget is never cut in the middle: training skips it and counts it, ``ett ask`` writes an
error line for it and answers the rest, lmms-eval gets an empty answer with a logged reason, and the answers of the
other questions do not change. Inference has its own budget (the LLM's context), not training's max_text_tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipSample
from ett_lightning.evaluation import InferenceModel
from ett_lightning.evaluation.ask import main as ask_main
from ett_lightning.models.generation import Decoding
from tests.conftest import IMAGE_SIZE

LONG = "Is it " + "very " * 200 + "red?"  # ~ 1000 bytes: over any budget of the byte-level tiny LLM


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(count)]


def test_training_skips_a_prompt_that_leaves_no_room_for_the_answer(tiny_export):
    model = InferenceModel.from_export(str(tiny_export))
    builder = SequenceBuilder(model.language_model.tokenizer, num_image_tokens=4, max_text_tokens=32)
    with pytest.raises(SkipSample, match="prompt too long: .* tokens leave no room for an answer within 32"):
        builder.build("vqa", {"question": "word " * 10}, "red")
    fitting = builder.build("vqa", {"question": "why?"}, "a long answer " * 10)
    assert fitting.truncated and fitting.input_ids[-1] == builder.tokenizer.eos_token_id  # answers are still cut


def test_inference_has_its_own_budget_and_two_answers_score_apart(tiny_export):
    model = InferenceModel.from_export(str(tiny_export))
    assert model.inputs.max_text_tokens == 128  # training's budget, recorded in the export
    assert model.max_text_tokens == 256 - (IMAGE_SIZE // 4) ** 2 - 3  # the tiny LLM's 256 positions
    question = "What colour is " + "the " * 27 + "text?"  # over training's 128 tokens, within the context
    assert len(model.builder.prompt_ids(model.builder.prompt("vqa", {"question": question}))) > 128
    assert model.unfit(question) is None
    (red, _), (green, _) = model.log_likelihood(images(2), [question] * 2, ["red", "green"])
    assert red != green  # with the prompt cut, only the leading space was scored: both were equal
    assert "prompt too long" in model.unfit(LONG)
    with pytest.raises(SkipSample):
        model.answer(images(1), [LONG])


def test_ett_ask_writes_an_error_line_and_answers_the_rest(tiny_export, tmp_path, capsys):
    for index, image in enumerate(images(3)):
        image.save(tmp_path / f"{index}.png")
    questions = ["What is it?", LONG, "What colour is it?"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "question": q, "question_id": i}) + "\n"
                                              for i, q in enumerate(questions)))
    ask_main(["--export", str(tiny_export), "--questions", str(tmp_path / "q.jsonl"), "--output",
              str(tmp_path / "out.jsonl"), "--batch-size", "3"])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["question_id"] for row in rows] == [0, 1, 2]
    assert "prompt too long" in rows[1]["error"] and "answer" not in rows[1]
    alone = InferenceModel.from_export(str(tiny_export)).answer(
        [Image.open(tmp_path / "0.png"), Image.open(tmp_path / "2.png")], [questions[0], questions[2]])
    assert [rows[0]["answer"], rows[2]["answer"]] == alone
    summary = capsys.readouterr().err
    assert "answered 2 questions" in summary and "skipped 1 (prompt too long: 1)" in summary
    with pytest.raises(SystemExit) as exit_:
        ask_main(["--export", str(tiny_export), "--image", str(tmp_path / "0.png"), "--question", LONG])
    assert exit_.value.code == 2 and "prompt too long" in capsys.readouterr().err


def test_lmms_eval_answers_a_long_question_with_an_empty_answer_and_goes_on(tiny_export, caplog):
    lmms_eval_model = pytest.importorskip("ett_lightning.evaluation.lmms_eval_model")
    from lmms_eval.api.instance import Instance

    pictures = images(3)
    documents = [{"image": picture} for picture in pictures]
    model = lmms_eval_model.ETT(pretrained=str(tiny_export), batch_size=3)
    model.task_dict = {"t": {"test": documents}}
    questions = ["What is it?", LONG, "What colour is it?"]
    requests = [Instance("generate_until", (q, {"max_new_tokens": 8}, lambda doc: [doc["image"]], i, "t", "test"),
                         idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, q in enumerate(questions)]
    answers = model.generate_until(requests)
    alone = model.model.answer([pictures[0], pictures[2]], [questions[0], questions[2]], Decoding(max_new_tokens=8))
    assert answers == [alone[0], "", alone[1]]
    assert "t document 1 not asked: prompt too long" in caplog.text
    scores = model.loglikelihood([Instance("loglikelihood", (q, "red", lambda doc: [doc["image"]], i, "t", "test"),
                                           idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
                                  for i, q in enumerate(questions)])
    assert scores[1] == (float("-inf"), False) and all(np.isfinite(score) for score, _ in (scores[0], scores[2]))


@pytest.mark.parametrize("arguments,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--temperature", "nan"], "--temperature must be a number >= 0"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--device", "bogus"], "is no device"),
    (["--image-size", "-4"], "--image-size must be at least 1"),
    (["--max-text-tokens", "0"], "--max-text-tokens must be at least 1"),
])
def test_ett_ask_checks_its_numbers_before_loading(tiny_export, tmp_path, capsys, arguments, message):
    images(1)[0].save(tmp_path / "q.png")
    with pytest.raises(SystemExit) as exit_:
        ask_main(["--export", str(tiny_export), "--image", str(tmp_path / "q.png"), "--question", "what?", *arguments])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_line_of_a_questions_file_is_skipped_not_fatal(tiny_export, tmp_path, capsys):
    images(1)[0].save(tmp_path / "a.png")
    lines = ['{"image": "a.png", "question": "q", "question_id": ' + "9" * 5000 + "}",
             '{"image": "a.png", "question": "q\\ud800"}',
             '{"image": "a.png", "question": "q", "question_id": NaN}',
             '{"image": "a.png", "question": "fine", "question_id": "ok"}']
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    ask_main(["--export", str(tiny_export), "--questions", str(tmp_path / "q.jsonl"), "--output",
              str(tmp_path / "out.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["question_id"] for row in rows] == ["ok"]
    assert "skipped 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ask_main(["--export", str(tiny_export), "--questions", str(tmp_path / "q.jsonl"), "--output",
                  str(tmp_path / "q.jsonl")])
    assert "names the questions file itself" in capsys.readouterr().err
