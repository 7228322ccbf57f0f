"""Decoding one raw webdataset sample (caption or VQA layout) into model-ready tensors, or skipping it."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

from PIL import Image

from ett_lightning.data.sequences.conversation import is_conversation, last_assistant_answer, read_messages
from ett_lightning.data.skips import SkipCounter, SkipSample

if TYPE_CHECKING:  # decoding itself needs neither; the converters import this module for its readers
    from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
    from ett_lightning.data.streaming.transforms import ImageTransform

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read_image(sample: dict[str, Any]) -> Image.Image:
    """The first image member of the sample, fully decoded (so truncated files fail here, not later)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise SkipSample("no image member (expected one of jpg, jpeg, png, webp)")
    try:
        image = Image.open(io.BytesIO(sample[ext]))
        image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise SkipSample(f"undecodable image ({type(err).__name__})") from err
    return image


class TextFields(NamedTuple):
    task: str
    fields: dict[str, Any]
    target: str
    answers: list[str]
    answer_type: str = ""
    question_id: Any = None


def read_text_fields(sample: dict[str, Any]) -> TextFields:
    """(task, template fields, training target, reference answers, answer type) from ``json`` and/or ``txt``.

    A conversation when the json has ``conversations`` (LLaVA) or ``messages`` (chat messages): the fields hold the
    messages, the reference answer is the last assistant turn
    (:mod:`~ett_lightning.data.sequences.conversation`), and the question id the json's ``question_id`` or else its
    ``id`` (LLaVA's entry id).
    VQA when the json has a ``question``: the target is the most common of ``answers`` (first on ties) or
    ``answer``; all answers are kept, and ``answer_type`` (VQAv2's field, e.g. ``yes/no``) if present.
    Otherwise a caption task on ``txt`` (or the json's ``caption``).
    """
    meta = parse_json(sample.get("json"))
    if is_conversation(meta):
        messages = read_messages(meta)
        answer = last_assistant_answer(messages)
        return TextFields("conversation", {"messages": messages}, answer, [answer], str(meta.get("answer_type", "")),
                          meta.get("question_id", meta.get("id")))
    if "question" in meta:
        answers = meta.get("answers") or ([meta["answer"]] if "answer" in meta else [])
        answers = [str(a).strip() for a in answers if str(a).strip()]
        if not answers:
            raise SkipSample("vqa sample without answer")
        target = Counter(answers).most_common(1)[0][0]
        question = {"question": str(meta["question"]).strip()}
        return TextFields("vqa", question, target, answers, str(meta.get("answer_type", "")), meta.get("question_id"))
    caption = sample["txt"].decode("utf-8", errors="replace") if "txt" in sample else meta.get("caption")
    if caption is None:
        raise SkipSample("no caption (no txt member and no json caption/question)")
    caption = str(caption).strip()
    if not caption:
        raise SkipSample("empty caption")
    return TextFields("caption", {}, caption, [caption])


def parse_json(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SkipSample("malformed json") from err
    if not isinstance(meta, dict):
        raise SkipSample("json member is not an object")
    return meta


class SampleDecoder:
    """Raw sample -> dict(image, sequence, answers, answer_type, task, key, question_id); skips are counted and yield
    None, truncated texts are counted."""

    def __init__(self, transform: ImageTransform, builder: SequenceBuilder, skips: SkipCounter) -> None:
        self.transform = transform
        self.builder = builder
        self.skips = skips

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            text = read_text_fields(sample)
            image = self.transform(read_image(sample))
            sequence = self.builder.build(text.task, text.fields, text.target)
        except SkipSample as reason:
            self.skips.skip(str(reason), key)
            return None
        if sequence.truncated:
            self.skips.truncate(key)
        return {"image": image, "sequence": sequence, "answers": text.answers, "answer_type": text.answer_type,
                "task": text.task, "key": key, "question_id": text.question_id}
