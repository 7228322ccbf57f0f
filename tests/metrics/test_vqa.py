import json
from pathlib import Path

import pytest
import torch

from ett_lightning.metrics import CodebookUsage, VQAAccuracy, normalize_answer, soft_accuracy

OFFICIAL = json.loads((Path(__file__).parent / "data" / "vqa_official_scores.json").read_text())["rows"]


def test_official_option_equals_the_official_scorer_on_every_stored_case():
    """Rows scored by the official VQAv2 evaluation code (run outside this repository under Python 2.7)."""
    assert len(OFFICIAL) > 4000
    wrong = [(p, refs, expected, soft_accuracy(p, refs, "official")) for p, refs, expected in OFFICIAL
             if soft_accuracy(p, refs, "official") != pytest.approx(expected, abs=1e-12)]
    assert not wrong, f"{len(wrong)} of {len(OFFICIAL)} differ, e.g. {wrong[:5]}"


def test_default_equals_lmms_evals_vqav2_scorer_on_every_stored_case():
    """lmms-eval's own VQAv2 ``process_results`` (installed with the ``eval`` extra), called on the stored cases
    with distinct ``answer_id`` s, as VQAv2's references have them."""
    utils = pytest.importorskip("lmms_eval.tasks.vqav2.utils")

    def lmms_eval_score(prediction, references):
        doc = {"question_id": 0, "answers": [{"answer": r, "answer_id": i} for i, r in enumerate(references)]}
        return utils.vqav2_process_results(doc, [prediction])["exact_match"]

    wrong = [(p, refs) for p, refs, _ in OFFICIAL
             if soft_accuracy(p, refs) != pytest.approx(lmms_eval_score(p, refs), abs=1e-12)]
    assert not wrong, f"{len(wrong)} of {len(OFFICIAL)} differ, e.g. {wrong[:5]}"
    differs_from_official = sum(soft_accuracy(p, refs) != pytest.approx(expected) for p, refs, expected in OFFICIAL)
    assert differs_from_official > 0  # the table holds cases where the two conventions disagree
    assert soft_accuracy("Yes", ["yes"] * 10) == 1.0 and soft_accuracy("Yes", ["yes"] * 10, "official") == 0.0


@pytest.mark.parametrize("prediction,references,expected", [
    ("2.", ["2"] * 6 + ["3"] * 4, 1.0),           # a period not followed by a digit goes, after a digit too
    ("1,000", ["1000"] * 10, 0.0),                # unanimous references: nothing is normalised
    ("Yes", ["yes"] * 10, 0.0),
    ("Yes.", ["yes"] * 9 + ["no"], 1.0),
    ("a" + "." * 40, ["a"] * 5 + ["b"] * 5, 0.0),  # only 32 periods are removed
])
def test_official_quirks(prediction, references, expected):
    assert [prediction, references, expected] in OFFICIAL
    assert soft_accuracy(prediction, references, "official") == pytest.approx(expected)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="normalization must be one of"):
        VQAAccuracy("lenient")


@pytest.mark.parametrize("raw,expected", [
    ("Two", "2"),
    ("the dog", "dog"),
    ("A red car.", "red car"),
    ("yes!", "yes"),
    ("dont know", "don't know"),
    ("3.5", "3.5"),
    ("1,000", "1000"),
    ("black/white", "black white"),
    ("  Ten  ", "10"),
    ("oclock", "o'clock"),
    ("$5.", "$5"),
    ("it's", "it's"),
    ("50%!", "50%"),
])
def test_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_single_reference_is_exact_match_after_normalisation():
    assert soft_accuracy("The Cat.", ["cat"]) == 1.0
    assert soft_accuracy("dog", ["cat"]) == 0.0
    assert soft_accuracy("", ["cat"]) == 0.0


def test_partial_agreement_two_of_ten():
    refs = ["red", "red"] + ["blue"] * 8
    assert soft_accuracy("red", refs) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert soft_accuracy("blue", refs) == pytest.approx(1.0)
    assert soft_accuracy("green", refs) == 0.0


def test_three_of_ten_is_nearly_full_credit():
    refs = ["two"] * 3 + ["three"] * 7
    assert soft_accuracy("2", refs) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)


def test_metric_accumulates_and_resets():
    metric = VQAAccuracy()
    metric.update(["cat", "two"], [["cat"], ["2"]])
    metric.update(["dog"], [["cat"]])
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.reset()
    metric.update(["a dog"], [["dog"]])
    assert metric.compute().item() == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1"):
        metric.update(["a", "b"], [["a"]])


def test_codebook_usage_on_known_indices():
    metric = CodebookUsage(codebook_size=8)
    metric.update(torch.tensor([[0, 1], [2, 3]]))
    metric.update(torch.tensor([0, 1, 2, 3]))
    out = metric.compute()
    assert out["usage"].item() == 0.5 and out["perplexity"].item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        metric.update(torch.tensor([8]))
