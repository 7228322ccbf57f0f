"""VQA soft accuracy (Antol et al. 2015) as a torchmetrics Metric, with the answer normalisation of published
numbers (lmms-eval, EvalAI post-processing, LLaVA) or exactly that of the original VQAv2 evaluation code."""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# The official table of words written without their apostrophe, as data. Its entries with a capital letter are left
# out (words are lower-cased before the look-up, so they never apply); its odd entries are kept as they are, e.g.
# "somebody'd" -> "somebodyd".
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
# Not in the official list: the apostrophe, the period (handled apart), and * # % ^ & $ : which stay in the answer.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# A period is dropped unless a digit follows ("2." -> "2", "3.5" stays). The official pattern's look-behind is written
# as a look-ahead for "<=", which never matches, so a digit before the period does not protect it. Digits are ASCII
# digits, as the official Python 2 regexes read them, and at most 32 periods go (the official call passes the
# re.UNICODE flag, 32, where the replacement count belongs).
PERIOD = re.compile(r"\.(?![0-9])")
MAX_PERIODS_REMOVED = 32
DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")


def clean(answer: str) -> str:
    """Newlines and tabs to spaces, outer whitespace removed: what the official scorer does to every answer."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str) -> str:
    """Each listed mark is removed where it touches a space (anywhere in the text) or when the text has a comma
    between digits, and becomes a space otherwise; then periods not followed by a digit are removed."""
    joined_everywhere = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        joined = joined_everywhere or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if joined else " ")
    return PERIOD.sub("", out, count=MAX_PERIODS_REMOVED)


def normalize_words(text: str) -> str:
    """Lower case; number words to digits; articles dropped; words missing their apostrophe restored."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation: :func:`clean`, :func:`strip_punctuation`, :func:`normalize_words`."""
    return normalize_words(strip_punctuation(clean(answer)))


Normalization = Literal["always", "official"]
NORMALIZATIONS = ("always", "official")


def soft_accuracy(prediction: str, references: list[str], normalization: Normalization = "always") -> float:
    """The VQAv2 accuracy of one answer: for each reference, ``min(#other references equal to the prediction / 3,
    1)``, averaged over the references.

    ``normalization="always"`` (the default) normalises the prediction and every reference
    (:func:`normalize_answer`) before comparing, as lmms-eval's VQAv2 task, EvalAI-style post-processing and LLaVA
    do; published numbers are computed this way. ``"official"`` is the original vqaEval.py to the digit: it
    normalises only when the cleaned references are not all the same, so unanimous references are compared with
    the cleaned prediction as they are ("Yes" scores 0 against ten "yes"). Either way one reference is scored as
    exact match after normalisation, where both scorers, which assume ten, give 0.
    """
    if not references:
        raise ValueError("VQA accuracy needs at least one reference answer per question")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    pred, refs = clean(prediction), [clean(r) for r in references]
    if len(refs) == 1:
        return float(normalize_answer(pred) == normalize_answer(refs[0]))
    if normalization == "always" or len(set(refs)) > 1:
        pred, refs = normalize_words(strip_punctuation(pred)), [normalize_words(strip_punctuation(r)) for r in refs]
    matches = sum(ref == pred for ref in refs)
    return sum(min(1.0, (matches - (ref == pred)) / 3.0) for ref in refs) / len(refs)


class VQAAccuracy(Metric):
    """Mean VQA soft accuracy (:func:`soft_accuracy`); the sums are reduced across DDP ranks.

    Args:
        normalization: ``"always"`` (published numbers, lmms-eval) or ``"official"`` (original vqaEval.py).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, normalization: Normalization = "always", **kwargs) -> None:
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.add_state("score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], targets: list[list[str]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} reference lists")
        self.score += sum(soft_accuracy(p, t, self.normalization) for p, t in zip(preds, targets))
        self.count += len(preds)

    def compute(self) -> Tensor:
        return (self.score / self.count.clamp_min(1)).float()
