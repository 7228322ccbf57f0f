"""The official VQAv2 question and annotation files -> VQA shards, one sample per question.

Questions: ``{"questions": [{"image_id", "question", "question_id"}]}``; annotations:
``{"annotations": [{"question_id", "answers": [{"answer": ...} x 10], "answer_type", "question_type",
"multiple_choice_answer"}]}``. Each sample keeps ``question_id``, ``answer_type`` and all ten answers, which
:class:`~ett_lightning.callbacks.VQAEvaluation` scores with the official rule and writes back by ``question_id``.
An image shared by several questions is stored once per question: a shard sample is self-contained.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ett_lightning.convert.entries import progress, read_utf8
from ett_lightning.convert.images import image_member
from ett_lightning.convert.shard_output import ShardOutput
from ett_lightning.data.skips import SkipSample
from ett_lightning.data.streaming.decoding import IMAGE_EXTENSIONS

TRAILING_ID = re.compile(r"(\d+)$")


def convert_vqav2(questions_file: str | Path, annotations_file: str | Path, image_root: str | Path,
                  output: ShardOutput) -> dict[str, Any]:
    """Writes the questions in file order; skips and counts questions without an annotation, without answers, or
    whose image is missing or undecodable. Returns the summary."""
    questions = load_section(questions_file, "questions")
    annotations = {a["question_id"]: a for a in load_section(annotations_file, "annotations")
                   if isinstance(a, dict) and is_id(a.get("question_id"))}
    root = Path(image_root)
    images = index_images(root)
    for index, question in enumerate(progress(questions, "vqav2")):
        try:
            output.write(index, sample(question, annotations, images, root))
        except SkipSample as reason:
            output.skip(reason, f"question {index}")
    return output.close()


def load_section(path: str | Path, section: str) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    content = json.loads(read_utf8(path))
    if not isinstance(content, dict) or not isinstance(content.get(section), list):
        raise ValueError(f"{path} has no {section!r} list: is it the VQAv2 {section} file?")
    return content[section]


def index_images(root: Path) -> dict[int, Path]:
    """Image id -> file under ``root`` (any depth), read from the digits that end the file name: COCO 2014
    (``COCO_val2014_000000262148.jpg``) and 2017 (``000000262148.jpg``) names alike."""
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    images: dict[int, Path] = {}
    for path in sorted(root.rglob("*")):
        match = TRAILING_ID.search(path.stem)
        if match and path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
            images.setdefault(int(match.group(1)), path)
    return images


def is_id(value: Any) -> bool:
    """Question and image ids are numbers (or strings, in derived datasets); anything else is a malformed entry."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def sample(question: Any, annotations: dict[int, dict], images: dict[int, Path], root: Path) -> dict[str, Any]:
    if (not isinstance(question, dict) or not is_id(question.get("question_id"))
            or not is_id(question.get("image_id")) or not isinstance(question.get("question"), str)):
        raise SkipSample("question entry without question_id, image_id and question")
    annotation = annotations.get(question["question_id"])
    if annotation is None:
        raise SkipSample("question without an annotation")
    listed = annotation.get("answers")
    listed = listed if isinstance(listed, list) else []
    answers = [str(a["answer"]) for a in listed if isinstance(a, dict) and "answer" in a]
    if not answers:
        raise SkipSample("annotation without answers")
    if question["image_id"] not in images:
        raise SkipSample("missing image file")
    ext, data = image_member(images[question["image_id"]], root)
    meta = {"question_id": question["question_id"], "image_id": question["image_id"],
            "question": question["question"], "answers": answers,
            "answer_type": annotation.get("answer_type", ""), "question_type": annotation.get("question_type", ""),
            "multiple_choice_answer": annotation.get("multiple_choice_answer", "")}
    return {ext: data, "json": meta}
