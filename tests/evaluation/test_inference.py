"""InferenceModel and ``ett ask`` on a tiny export: answers independent of the batch, log-likelihood as its formula,
untrusted export manifests and question files refused or skipped, nothing of training loaded."""

from __future__ import annotations

import json
import os

import lpips
import numpy as np
import pytest
import torch
from PIL import Image

from ett_lightning.evaluation import InferenceModel
from ett_lightning.evaluation.ask import main as ask_main
from ett_lightning.models.generation import Decoding
from tests.conftest import IMAGE_SIZE, copy_of_export


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export


def images_and_questions(count: int = 8):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(count)]
    return images, [f"What is {'the colour of ' * i}it?" for i in range(count)]


def test_loading_builds_nothing_of_training(export_dir, monkeypatch):
    def no_lpips(*args, **kwargs):
        raise AssertionError("inference built LPIPS")

    monkeypatch.setattr(lpips, "LPIPS", no_lpips)
    model = InferenceModel.from_export(str(export_dir))
    assert not hasattr(model, "loss") and all(not p.requires_grad for p in model.parameters())


def test_answers_do_not_depend_on_the_batch(export_dir):
    model = InferenceModel.from_export(str(export_dir))
    images, questions = images_and_questions()
    decoding = Decoding(max_new_tokens=8)
    one_by_one = [model.answer([image], [question], decoding)[0] for image, question in zip(images, questions)]
    assert len(set(one_by_one)) > 1
    assert model.answer(images, questions, decoding) == one_by_one


def test_stop_strings_cut_the_answer(export_dir):
    model = InferenceModel.from_export(str(export_dir))
    images, questions = images_and_questions(2)
    full = model.answer(images, questions, Decoding(max_new_tokens=8))
    stop = full[0][2]
    cut = model.answer(images, questions, Decoding(max_new_tokens=8, stop=(stop,)))
    assert cut == [answer.split(stop, 1)[0].strip() for answer in full] and cut[0] == full[0][:2].strip()


def test_sampling_is_seeded_and_differs_from_greedy(export_dir):
    model = InferenceModel.from_export(str(export_dir))
    images, questions = images_and_questions()
    hot = Decoding(max_new_tokens=8, temperature=5.0)
    torch.manual_seed(0)
    first = model.answer(images, questions, hot)
    torch.manual_seed(0)
    assert model.answer(images, questions, hot) == first
    assert first != model.answer(images, questions, Decoding(max_new_tokens=8))


def test_greedy_ignores_the_llms_generation_config_unless_asked(export_dir, tmp_path):
    """An Instruct LLM ships sampling settings in generation_config.json; greedy answers must stay argmax answers."""
    instruct = copy_of_export(export_dir, tmp_path / "instruct")
    settings = instruct / "language_model" / "generation_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "repetition_penalty": 5.0,
                                    "no_repeat_ngram_size": 1, "top_k": 3}))
    images, questions = images_and_questions()
    plain = InferenceModel.from_export(str(export_dir)).answer(images, questions, Decoding(max_new_tokens=8))
    model = InferenceModel.from_export(str(instruct))
    assert model.language_model.causal_lm.generation_config.no_repeat_ngram_size == 1  # the file was read
    assert model.answer(images, questions, Decoding(max_new_tokens=8)) == plain
    assert model.answer(images, questions, Decoding(max_new_tokens=8, model_defaults=True)) != plain
    assert model.language_model.causal_lm.generation_config.repetition_penalty == 5.0  # left as loaded


def test_log_likelihood_is_the_sum_of_the_answer_tokens_log_probabilities(export_dir):
    model = InferenceModel.from_export(str(export_dir))
    images, questions = images_and_questions(2)
    continuations = ["red", "a long answer"]
    scores = model.log_likelihood(images, questions, continuations)
    lm = model.language_model
    for row, (image, question, continuation) in enumerate(zip(images, questions, continuations)):
        sequence = model.sample(image, question, continuation)["sequence"]
        answer_ids = lm.tokenizer.encode(" " + continuation, add_special_tokens=False)
        start = sequence.target_start
        assert sequence.input_ids[start:start + len(answer_ids)] == answer_ids
        batch = model.batch([image], [question], [continuation])
        embeds = model.projector(model.tokenizer.encode(batch.images).embeddings)
        logits = lm(batch.input_ids, None, embeds, batch.image_slots).logits[0]
        expected = sum(torch.log_softmax(logits[start + i - 1], -1)[token].item() for i, token in enumerate(answer_ids))
        greedy = all(int(logits[start + i - 1].argmax()) == token for i, token in enumerate(answer_ids))
        assert scores[row][0] == pytest.approx(expected, abs=1e-4) and scores[row][1] == greedy


def test_an_export_without_recorded_inputs_loads_with_the_tokenizers_size(export_dir, tmp_path, caplog):
    old = copy_of_export(export_dir, tmp_path / "old", lambda manifest: manifest.pop("inputs"))
    model = InferenceModel.from_export(str(old))
    assert model.inputs.image_size == IMAGE_SIZE and "records no inputs" in caplog.text
    assert InferenceModel.from_export(str(old), image_size=16).inputs.image_size == 16


def test_ett_ask_one_question_prints_the_answer(export_dir, tmp_path, capsys):
    images, questions = images_and_questions(1)
    images[0].save(tmp_path / "q.png")
    ask_main(["--export", str(export_dir), "--image", str(tmp_path / "q.png"), "--question", questions[0],
              "--max-new-tokens", "8"])
    expected = InferenceModel.from_export(str(export_dir)).answer(images, questions, Decoding(max_new_tokens=8))[0]
    assert capsys.readouterr().out == expected + "\n"


def test_ett_ask_skips_and_counts_lines_it_cannot_answer(export_dir, tmp_path, capsys):
    root = tmp_path / "questions"
    (root / "img").mkdir(parents=True)
    images, questions = images_and_questions(2)
    images[0].save(root / "img/a.png")
    images[1].save(tmp_path / "secret.png")
    (root / "img/link.png").symlink_to(tmp_path / "secret.png")
    (root / "img/broken.png").write_bytes(b"not a png")
    lines = [json.dumps({"image": "img/a.png", "question": questions[0], "question_id": "q1"}).encode(),
             b"{not json",
             "{\"image\": \"img/a.png\", \"question\": \"caf\xe9?\"}".encode("latin-1"),
             json.dumps({"image": "img/a.png"}).encode(),
             json.dumps({"question": "where?"}).encode(),
             json.dumps({"image": "../secret.png", "question": "q"}).encode(),
             json.dumps({"image": str(tmp_path / "secret.png"), "question": "q"}).encode(),
             json.dumps({"image": "img/link.png", "question": "q"}).encode(),
             json.dumps({"image": "img/missing.png", "question": "q"}).encode(),
             json.dumps({"image": "img/broken.png", "question": "q"}).encode(),
             json.dumps({"image": "img/a.png", "question": questions[1]}).encode()]
    (root / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ask_main(["--export", str(export_dir), "--questions", str(root / "in.jsonl"),
              "--output", str(tmp_path / "out.jsonl"), "--batch-size", "8", "--max-new-tokens", "8"])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["question"]) for r in rows] == [("q1", questions[0]), (11, questions[1])]
    expected = InferenceModel.from_export(str(export_dir)).answer([images[0]] * 2, questions, Decoding(8))
    assert [r["answer"] for r in rows] == expected
    summary = capsys.readouterr().err
    assert "answered 2 questions" in summary and "skipped 9" in summary
    for reason, count in [("not a JSON line in UTF-8: 2", 2), ("no question text: 1", 1), ("no image path: 1", 1),
                          (f"image outside {root.resolve()}: 3", 3), ("image not found: 1", 1),
                          ("unreadable image: 1", 1)]:
        assert reason in summary, (reason, count, summary)
    assert os.path.exists(tmp_path / "secret.png")


def test_lmms_eval_generation_arguments_become_a_decoding():
    lmms_eval_model = pytest.importorskip("ett_lightning.evaluation.lmms_eval_model")
    decoding_of = lmms_eval_model.decoding_of
    assert decoding_of({}) == Decoding(256)  # the documented default when a task sets none
    assert decoding_of({"until": "\n", "max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9}) == Decoding(
        4, 0.7, 0.9, ("\n",))
    unsampled = decoding_of({"until": ["A", "B"], "temperature": 0.7, "do_sample": False})
    assert unsampled == Decoding(256, 0.0, 1.0, ("A", "B"))
    greedy, short = Decoding(16), Decoding(4)
    runs = list(lmms_eval_model.batches([(1, greedy), (2, greedy), (3, greedy), (4, short), (5, greedy)], 2))
    assert runs == [([1, 2], greedy), ([3], greedy), ([4], short), ([5], greedy)]
