"""How sure the demo's gain is: a paired bootstrap over seeds and questions.

Both arms answer the same held-out questions in every seed, so the gain is resampled in pairs: draw seeds with
replacement, then questions with replacement, and take the mean of ETT's score minus the frozen arm's on the
draws. The interval covers both sources of noise the demo has: which seed trained the arms, and which questions
the val split happens to hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from ett_lightning.data.streaming.shards import expand_shards
from ett_lightning.metrics.vqa import soft_accuracy


def reference_answers(shards: str) -> dict[str, list[str]]:
    """question_id (as a string) -> reference answers, from VQA shards' json."""
    references = {}
    for sample in wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False):
        meta = json.loads(sample.get("json", b"{}"))
        if "question_id" in meta and meta.get("answers"):
            references[str(meta["question_id"])] = [str(a) for a in meta["answers"]]
    return references


def question_scores(results_file: Path, references: dict[str, list[str]]) -> dict[str, float]:
    """question_id -> VQA accuracy of the answer in a ``VQAEvaluation`` results file (questions without a
    reference are left out)."""
    answers = json.loads(Path(results_file).read_text())
    return {str(r["question_id"]): soft_accuracy(r["answer"], references[str(r["question_id"])])
            for r in answers if str(r["question_id"]) in references}


def score_matrix(per_seed: list[dict[str, float]], questions: list[str]) -> np.ndarray:
    """[seeds, questions] scores, the questions in the given order."""
    return np.array([[scores[q] for q in questions] for scores in per_seed])


def paired_interval(frozen: np.ndarray, ett: np.ndarray, level: float = 0.95, draws: int = 4000,
                    seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of mean(ett - frozen), in accuracy units, from [seeds, questions]
    matrices of the same questions."""
    if frozen.shape != ett.shape or frozen.ndim != 2:
        raise ValueError(f"need two [seeds, questions] matrices of one shape, got {frozen.shape} and {ett.shape}")
    gain = ett - frozen
    rng = np.random.default_rng(seed)
    num_seeds, num_questions = gain.shape
    seeds = rng.integers(0, num_seeds, (draws, num_seeds))
    means = np.empty(draws)
    for draw in range(draws):
        questions = rng.integers(0, num_questions, num_questions)
        means[draw] = gain[seeds[draw]][:, questions].mean()
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
