"""``ett ask``: answers from an export, for one image or a file of questions."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ett_lightning.confined_paths import resolved_inside
from ett_lightning.evaluation.inference import PROMPT_STYLES, InferenceModel
from ett_lightning.models.generation import Decoding

IMAGE_NOT_FOUND = "image not found"


@dataclass
class Question:
    """One line of a questions file: its ``question_id`` (the line number when the line has none)."""

    question_id: Any
    question: str
    image: Path


class QuestionsFile:
    """Reads ``image`` / ``question`` / ``question_id`` JSON lines; a line that cannot be answered (not JSON, a
    field missing, an image outside ``image_root`` or missing or undecodable) is skipped and counted by reason.

    Image paths are relative to ``image_root`` (default: the file's folder) and must resolve inside it, links
    followed: a questions file from elsewhere cannot make ``ett ask`` read other files on the machine.
    """

    def __init__(self, path: Path, image_root: Path | None = None) -> None:
        self.path = path
        self.image_root = (image_root or path.parent).resolve()
        self.skipped: Counter[str] = Counter()

    def questions(self) -> list[Question]:
        found = []
        with self.path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if raw.strip():
                    question = self.parse(number, raw)
                    if question is not None:
                        found.append(question)
        return found

    def parse(self, number: int, raw: bytes) -> Question | None:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: also an integer of 5000 digits
            return self.skip("not a JSON line in UTF-8")
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or not entry["question"].strip():
            return self.skip("no question text")
        question_id = entry.get("question_id", number)
        if not (isinstance(question_id, int | str) and text_encodes(entry["question"] + str(question_id))):
            return self.skip("question or question_id is not UTF-8 text or a whole number")
        if not isinstance(entry.get("image"), str):
            return self.skip("no image path")
        image = resolved_inside(self.image_root / entry["image"], self.image_root)
        if image is None:
            return self.skip(f"image outside {self.image_root}")
        return Question(question_id, entry["question"], image)

    def open_image(self, question: Question) -> Image.Image | None:
        image = open_image(question.image)
        if isinstance(image, str):
            return self.skip("image not found" if image.startswith(IMAGE_NOT_FOUND) else "unreadable image")
        return image

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None


def text_encodes(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (a JSON ``\\ud800`` escape decodes to a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def open_image(path: Path) -> Image.Image | str:
    """The decoded image at ``path``, or why it cannot be read (one line for the command's error)."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        return f"{IMAGE_NOT_FOUND}: {path}"
    except IsADirectoryError:
        return f"{path} is a directory, not an image"
    except Exception as err:  # PIL raises many types for broken, foreign or oversized files
        return f"{path} is not a readable image ({type(err).__name__})"
    return image


def answer_file(model: InferenceModel, questions: QuestionsFile, output: Path, batch_size: int,
                decoding: Decoding) -> int:
    """Writes one JSON line per question with a readable image to ``output``, in the file's order: its ``answer``,
    or an ``error`` saying why it was not asked (a prompt longer than the model's budget, counted as skipped);
    returns how many were answered."""
    pending = questions.questions()
    answered = 0
    with output.open("w", encoding="utf-8") as out:
        for start in range(0, len(pending), batch_size):
            chunk = [(q, questions.open_image(q)) for q in pending[start:start + batch_size]]
            chunk = [(q, image, model.unfit(q.question)) for q, image in chunk if image is not None]
            asked = [(q, image) for q, image, unfit in chunk if unfit is None]
            answers = iter(model.answer([image for _, image in asked], [q.question for q, _ in asked], decoding))
            for question, _, unfit in chunk:
                result = {"answer": next(answers)} if unfit is None else {"error": unfit}
                if unfit is not None:
                    questions.skip(unfit.split(":")[0])
                out.write(json.dumps({"question_id": question.question_id, "question": question.question, **result},
                                     ensure_ascii=False) + "\n")
            answered += len(asked)
    return answered


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ett ask", description="Answers questions about images with an exported model "
                                "(`ett export`). Runs offline: it loads the export's files and nothing else.")
    p.add_argument("--export", required=True, help="directory written by `ett export`")
    p.add_argument("--image", help="one image to ask about (with --question)")
    p.add_argument("--question", help="the question about --image; the answer is printed")
    p.add_argument("--questions", help="JSON lines with image, question and optionally question_id")
    p.add_argument("--output", help="JSON lines to write, one per question: question_id, question, answer")
    p.add_argument("--image-root", help="folder the questions' image paths are relative to and must stay inside "
                                        "(default: the questions file's folder)")
    p.add_argument("--batch-size", type=int, default=8, help="questions answered together (left-padded)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in LLM tokens")
    p.add_argument("--max-text-tokens", type=int, help="text tokens a question with its template may take (default: "
                   "the LLM's context beside the image tokens); a longer question is refused, never cut")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--model-generation-config", action="store_true",
                   help="also apply the LLM's generation_config.json (repetition penalty, top-k, ...); without it, "
                        "greedy decoding is plain argmax")
    p.add_argument("--prompt", choices=PROMPT_STYLES, default="vqa",
                   help="vqa: the run's vqa template; chat: one user turn through the LLM's chat template")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast the weights (default: as saved)")
    p.add_argument("--image-size", type=int, help="override the image size the export records")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the export's LLM run the code it ships (an auto_map in its config); off unless given")
    return p


def argument_problem(options: argparse.Namespace) -> str | None:
    """What is wrong with the numbers, device and output path, before the model is loaded; None when nothing."""
    for name in ("batch_size", "max_new_tokens", "image_size", "max_text_tokens"):
        value = getattr(options, name)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {value}"
    if not (math.isfinite(options.temperature) and options.temperature >= 0):
        return f"--temperature must be a number >= 0 (0: greedy), got {options.temperature}"
    if options.question is not None and not text_encodes(options.question):
        return "--question is not valid UTF-8 text"
    if not 0 < options.top_p <= 1:
        return f"--top-p must be in (0, 1], got {options.top_p}"
    try:
        device = torch.device(options.device)
    except (RuntimeError, ValueError):
        return f"--device {options.device!r} is no device (cpu, cuda, cuda:1, ...)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available here; use --device cpu"
    if options.output:
        output = Path(options.output)
        if output.is_dir() or not output.parent.is_dir():
            return f"--output {output}: expected a file path in an existing folder"
        if options.questions and output.resolve() == Path(options.questions).resolve():
            return "--output names the questions file itself; write the answers elsewhere"
    return None


def main(args: list[str] | None = None) -> None:
    """``ett ask --export DIR --image PATH --question TEXT`` or ``... --questions IN.jsonl --output OUT.jsonl``."""
    options = parser().parse_args(args)
    single, many = options.image or options.question, options.questions or options.output
    if bool(single) == bool(many) or (single and not (options.image and options.question)) or (
            many and not (options.questions and options.output)):
        parser().error("give --image and --question, or --questions and --output")
    problem = argument_problem(options)
    if problem:
        parser().error(problem)
    decoding = Decoding(options.max_new_tokens, options.temperature, options.top_p,
                        model_defaults=options.model_generation_config)
    torch.manual_seed(options.seed)
    if single:
        image = open_image(Path(options.image))
        if isinstance(image, str):
            parser().error(image)
    else:
        questions = QuestionsFile(Path(options.questions), Path(options.image_root) if options.image_root else None)
        if not questions.path.is_file():
            parser().error(f"questions file not found: {questions.path}")
    try:
        model = InferenceModel.from_export(options.export, options.device, options.dtype, options.prompt,
                                           options.image_size, options.trust_remote_code,
                                           options.max_text_tokens)
    except (FileNotFoundError, ValueError) as refused:  # a missing or refused export (ExportError is a ValueError)
        parser().error(str(refused).splitlines()[0])
    if single:
        unfit = model.unfit(options.question)
        if unfit is not None:
            parser().error(f"{unfit}; give a shorter question or a larger --max-text-tokens")
        print(model.answer([image], [options.question], decoding)[0])
        return
    answered = answer_file(model, questions, Path(options.output), options.batch_size, decoding)
    skipped = ", ".join(f"{reason}: {count}" for reason, count in questions.skipped.most_common())
    print(f"answered {answered} questions into {options.output}; skipped {questions.skipped.total()}"
          + (f" ({skipped})" if skipped else ""), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
