"""The demo's interval: paired bootstrap over seeds and questions, scored as VQAAccuracy scores."""

import json

import numpy as np
import pytest

from ett_lightning.experiments.interval import paired_interval, question_scores, score_matrix


def test_a_constant_gain_has_an_interval_of_that_gain_only():
    frozen = np.random.default_rng(0).integers(0, 2, (3, 200)).astype(float)
    low, high = paired_interval(frozen, frozen + 0.1)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_the_interval_covers_the_true_gain_and_narrows_with_more_questions():
    rng = np.random.default_rng(1)
    widths = []
    for questions in (200, 3200):
        frozen = (rng.random((5, questions)) < 0.3).astype(float)
        ett = (rng.random((5, questions)) < 0.4).astype(float)
        low, high = paired_interval(frozen, ett)
        assert low < 0.1 < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_seed_to_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    frozen = (rng.random((5, 400)) < 0.3).astype(float)
    steady = frozen + 0.05
    swinging = frozen + np.array([[-0.2], [0.3], [-0.1], [0.25], [0.0]])
    steady_low, steady_high = paired_interval(frozen, steady)
    low, high = paired_interval(frozen, swinging)
    assert high - low > 5 * (steady_high - steady_low)


def test_matrices_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_interval(np.zeros((2, 3)), np.zeros((2, 4)))


def test_question_scores_are_vqa_accuracy_of_each_answer(tmp_path):
    results = tmp_path / "vqa_results.json"
    results.write_text(json.dumps([{"question_id": 1, "answer": "Red"}, {"question_id": 2, "answer": "7"},
                                   {"question_id": 3, "answer": "x"}]))
    scores = question_scores(results, {"1": ["red"], "2": ["9"]})
    assert scores == {"1": 1.0, "2": 0.0}
    assert score_matrix([scores, {"1": 0.0, "2": 1.0}], ["2", "1"]).tolist() == [[0.0, 1.0], [1.0, 0.0]]
