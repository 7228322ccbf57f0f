"""Seeded fuzzing of the converters' readers: mutated entries, lines and captions rows are skipped and counted,
the run finishes, and the shards hold exactly the samples the summary reports and no byte from outside the root."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from ett_lightning.convert.cli import main
from tests.convert.test_converters import TURNS, read_shards, summary, write_image

POISON: list[Any] = [None, True, 0, -1, 2 ** 70, 1.5, "", " ", "\x00", "\ud800", "../secret/secret.png",
                     "SECRET_PATH", "<image>" * 3, "x" * 5000, [], {}, [[[]]], {"from": "gpt"}, ["a.png", "a.png"],
                     {"answer": ["yes"]}, "a.png\x00.png"]
ENTRIES = 120


def poison(rng: random.Random, secret: Path) -> Any:
    value = copy.deepcopy(rng.choice(POISON))
    return str(secret) if value == "SECRET_PATH" else value


def mutated(value: Any, rng: random.Random, secret: Path, depth: int = 0) -> Any:
    """``value`` with one random node replaced, deleted, or wrapped."""
    if depth > 0 and rng.random() < 0.3 or not isinstance(value, dict | list) or not value:
        return rng.choice([lambda: poison(rng, secret), lambda: [value], lambda: {"value": value}])()
    value = copy.copy(value)
    key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
    if rng.random() < 0.2:
        del value[key]
    else:
        value[key] = mutated(value[key], rng, secret, depth + 1)
    return value


def mutated_text(line: str, rng: random.Random) -> str:
    """A line with characters inserted, deleted or replaced, quotes, separators and NULs included."""
    chars = list(line)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(chars) + 1)
        edit = rng.random()
        if edit < 0.4:
            chars.insert(at, rng.choice(['"', ",", "\t", "\n", "\x00", "\\", "{", "\u00e9", "\r"]))
        elif edit < 0.7 and at < len(chars):
            del chars[at]
        elif at < len(chars):
            chars[at] = chr(rng.randrange(32, 0x3000))
    return "".join(chars)


@pytest.fixture
def source(tmp_path) -> tuple[Path, Path, bytes]:
    root = tmp_path / "images"
    for index in range(4):
        write_image(root / f"COCO_val2014_{index:012d}.png", (60 * index, 0, 0))
    (root / "link.png").symlink_to(tmp_path / "secret" / "secret.png")
    secret = write_image(tmp_path / "secret" / "secret.png", (7, 7, 7))
    return root, tmp_path / "secret" / "secret.png", secret


def check_run(out: Path, entries: int, secret: bytes, split: str = "train") -> None:
    """The run finished with a summary that accounts for every entry, and its shards hold what it says."""
    result = summary(out, split)
    assert result["written"] + result["skipped"] == entries
    assert all(isinstance(reason, str) and count > 0 for reason, count in result["skipped_by_reason"].items())
    samples = read_shards(out, split)
    assert len(samples) == result["written"]
    assert not any(secret in value for sample in samples for value in sample.values() if isinstance(value, bytes))
    assert not list(out.glob("*.partial"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(3))
def test_llava_entries(source, tmp_path, seed):
    root, secret_path, secret = source
    rng = random.Random(seed)
    good = {"id": "x", "image": "COCO_val2014_000000000001.png", "conversations": TURNS}
    entries = [mutated(good, rng, secret_path) if index % 4 else good for index in range(ENTRIES)]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    lines = [json.dumps(entry) for entry in entries]
    (tmp_path / "llava.jsonl").write_text("\n".join(mutated_text(line, rng) if i % 3 else line
                                                    for i, line in enumerate(lines)))
    for name in ("llava.json", "llava.jsonl"):
        out = tmp_path / f"out_{name}"
        main(["llava", "--json", str(tmp_path / name), "--image-root", str(root), "--output", str(out)])
        check_run(out, len((tmp_path / name).read_text().splitlines()) if name.endswith("l") else ENTRIES, secret)
        assert summary(out)["written"] >= 5


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(3))
def test_vqav2_questions_and_annotations(source, tmp_path, seed):
    root, secret_path, secret = source
    rng = random.Random(seed)
    questions, annotations = [], []
    for index in range(ENTRIES):
        question = {"image_id": index % 5, "question": "What colour?", "question_id": index}
        annotation = {"question_id": index, "answers": [{"answer": "red"}] * 10, "answer_type": "other"}
        questions.append(mutated(question, rng, secret_path) if index % 3 == 1 else question)
        annotations.append(mutated(annotation, rng, secret_path) if index % 3 == 2 else annotation)
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    main(["vqav2", "--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
          "--image-root", str(root), "--output", str(tmp_path / "out"), "--split", "val"])
    check_run(tmp_path / "out", ENTRIES, secret, "val")
    assert summary(tmp_path / "out", "val")["written"] >= 5


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_folder_captions(source, tmp_path, seed, suffix):
    root, secret_path, secret = source
    rng = random.Random(seed)
    names = [f"COCO_val2014_{index % 4:012d}.png" for index in range(ENTRIES)]
    if suffix == "jsonl":
        rows = [json.dumps(mutated({"file_name": name, "caption": "a red square"}, rng, secret_path)
                           if index % 2 else {"file_name": name, "caption": "a red square"})
                for index, name in enumerate(names)]
    else:
        separator = "\t" if suffix == "tsv" else ","
        rows = [f"file_name{separator}caption"] + [f"{name}{separator}a red square" for name in names]
        rows = [rows[0]] + [mutated_text(row, rng) if index % 2 else row for index, row in enumerate(rows[1:])]
    captions = tmp_path / f"captions.{suffix}"
    captions.write_text("\n".join(rows) + "\n")
    main(["folder", "--images", str(root), "--captions", str(captions), "--output", str(tmp_path / "out")])
    from ett_lightning.convert.folder import read_rows

    check_run(tmp_path / "out", len(read_rows(captions)), secret)
    assert summary(tmp_path / "out")["written"] >= 5
