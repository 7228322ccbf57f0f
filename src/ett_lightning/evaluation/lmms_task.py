"""``ett lmms-task``: VQA shards (``ett-convert vqav2`` output, the demo's val set) as a local lmms-eval task, so one
set of questions is scored by ``VQAEvaluation`` and by lmms-eval alike.

The task folder holds the questions as parquet (image bytes, question, question id, answers), ``<name>.yaml``
and a ``utils.py`` that points lmms-eval at the functions below. The prompt is the bare question; the model's
own template lays it out. Scoring is lmms-eval's VQAv2 scorer. A question with a single reference answer gets it
ten times over, with distinct ``answer_id`` s: the scorer assumes ten references, and with one it would score 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from ett_lightning.data.skips import SkipCounter, SkipSample
from ett_lightning.data.streaming.decoding import IMAGE_EXTENSIONS, read_text_fields
from ett_lightning.data.streaming.shards import OrderedShardStream, expand_shards
from ett_lightning.data.streaming.tar_stream import tar_to_samples

VQAV2_REFERENCES = 10
UTILS = '''"""lmms-eval functions of this task, from ett_lightning (written by `ett lmms-task`)."""

from ett_lightning.evaluation.lmms_task import doc_to_text, doc_to_visual, process_results  # noqa: F401
'''


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The bare question: the model's prompt template adds the rest."""
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lmms-eval's VQAv2 accuracy of the answer (on a copy: that scorer rewrites the doc's answers in place)."""
    from lmms_eval.tasks.vqav2.utils import vqav2_process_results

    return {"exact_match": vqav2_process_results(copy.deepcopy(doc), results)["exact_match"]}


def task_yaml(name: str, data_file: Path, max_new_tokens: int) -> str:
    """The task's yaml; the name and path are written as quoted strings (JSON's are YAML's), so a path with spaces,
    ``#`` or ``: `` reads back as itself."""
    return f"""task: {json.dumps(name)}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data_file.resolve()))}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""


def vqa_rows(shards: str, skips: SkipCounter) -> list[dict[str, Any]]:
    """One row per VQA sample of the shards, in order; other samples and unreadable ones are counted in ``skips``."""
    rows = []
    for sample in wds.DataPipeline(OrderedShardStream(expand_shards(shards)), tar_to_samples(handler=skips.handler)):
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            text = read_text_fields(sample)
        except SkipSample as reason:
            skips.skip(str(reason), key)
            continue
        image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        if text.task != "vqa" or image is None:
            skips.skip("not a VQA sample with an image", key)
            continue
        answers = text.answers * VQAV2_REFERENCES if len(text.answers) == 1 else text.answers
        rows.append({"question_id": str(sample["__key__"] if text.question_id is None else text.question_id),
                     "question": text.fields["question"], "answer": text.target, "answer_type": text.answer_type,
                     "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)],
                     "image": {"bytes": image, "path": None}})
    return rows


def write_task(shards: str, out: Path, name: str, max_new_tokens: int = 16) -> tuple[int, SkipCounter]:
    """Writes the task folder; returns the number of questions and the skip counts."""
    import datasets

    skips = SkipCounter()
    rows = vqa_rows(shards, skips)
    if not rows:
        raise ValueError(f"{shards} holds no VQA samples (json with question and answers)")
    out.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({
        "question_id": datasets.Value("string"), "question": datasets.Value("string"),
        "answer": datasets.Value("string"), "answer_type": datasets.Value("string"),
        "answers": datasets.List({"answer": datasets.Value("string"), "answer_id": datasets.Value("int64")}),
        "image": datasets.Image(),
    })
    data_file = out / f"{name}.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(data_file))
    (out / f"{name}.yaml").write_text(task_yaml(name, data_file, max_new_tokens))
    (out / "utils.py").write_text(UTILS)
    return len(rows), skips


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ett lmms-task", description="VQA shards -> a local lmms-eval task "
                                     "(run it with `lmms-eval --include_path DIR --tasks NAME`).")
    parser.add_argument("--shards", required=True, help="VQA shards, e.g. 'data/synthetic/vqa/val-*.tar'")
    parser.add_argument("--out", required=True, help="task folder to write")
    parser.add_argument("--name", default="ett_vqa", help="task name (also the yaml and parquet file names)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length the task asks for")
    options = parser.parse_args(args)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", options.name):
        parser.error(f"--name {options.name!r:.60} must be letters, digits, '_', '-' and '.' (it names the files)")
    if options.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if Path(options.out).exists() and not Path(options.out).is_dir():
        parser.error(f"--out {options.out} is a file; give a folder to write the task into")
    if not options.out.strip() or set("*?[]") & set(str(Path(options.out).resolve())):
        parser.error(f"--out {options.out!r:.80}: give a folder path without '*', '?', '[' or ']' (lmms-eval reads the "
                     "data path as a glob)")
    try:
        count, skips = write_task(options.shards, Path(options.out), options.name, options.max_new_tokens)
    except (FileNotFoundError, ValueError) as unusable:
        parser.error(str(unusable).splitlines()[0])
    reasons = skips.by_reason
    print(f"wrote task {options.name} with {count} questions to {options.out}; skipped {skips.total}"
          + (f" ({', '.join(f'{r}: {n}' for r, n in reasons.most_common())})" if reasons else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
