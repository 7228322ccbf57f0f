"""VQA soft accuracy (Antol et al. 2015) with the standard answer normalisation, as a torchmetrics Metric."""

from __future__ import annotations

import re

import torch
from torch import Tensor
from torchmetrics import Metric

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "im": "i'm",
    "isnt": "isn't", "itll": "it'll", "ive": "i've", "lets": "let's", "shes": "she's", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "theyre": "they're", "wasnt": "wasn't", "werent": "weren't",
    "whats": "what's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "youve": "you've",
}
PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$"
PERIOD_NOT_IN_NUMBER = re.compile(r"(?<!\d)\.(?!\d)")
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """Lower case; punctuation removed (joined where it touches a space, else a space); periods kept only inside
    numbers; number words to digits; articles dropped; common contractions restored."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = COMMA_IN_NUMBER.sub(r"\1\3", text)
    for mark in PUNCTUATION + "'":
        if mark == "'" and re.search(r"[a-z]'[a-z]", text):
            continue
        joined = f"{mark} " in text or f" {mark}" in text
        text = text.replace(mark, "" if joined else " ")
    text = PERIOD_NOT_IN_NUMBER.sub("", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def soft_accuracy(prediction: str, references: list[str]) -> float:
    """min(#matching others / 3, 1) averaged over leaving each reference out; exact match for one reference."""
    pred = normalize_answer(prediction)
    refs = [normalize_answer(r) for r in references]
    if not refs:
        raise ValueError("VQA accuracy needs at least one reference answer per question")
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = [min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3.0) for i in range(len(refs))]
    return sum(scores) / len(scores)


class VQAAccuracy(Metric):
    """Mean VQA soft accuracy; the sums are reduced across DDP ranks."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], targets: list[list[str]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} reference lists")
        self.score += sum(soft_accuracy(p, t) for p, t in zip(preds, targets))
        self.count += len(preds)

    def compute(self) -> Tensor:
        return (self.score / self.count.clamp_min(1)).float()
