"""ett-convert: LLaVA, VQAv2 and folder sources to shards; bad entries skipped and counted; byte-identical reruns."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ett_lightning.convert.cli import main
from ett_lightning.data.streaming.decoding import read_text_fields
from ett_lightning.data.streaming.tar_stream import iter_tar_members
from ett_lightning.user_errors import UserError


def write_image(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), colour, dtype=np.uint8)).save(path, format=fmt)
    return path.read_bytes()


def read_shards(folder: Path, split: str = "train") -> list[dict]:
    urls = sorted(str(p) for p in folder.glob(f"{split}-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def summary(folder: Path, split: str = "train") -> dict:
    return json.loads((folder / f"{split}-summary.json").read_text())


TURNS = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
         {"from": "human", "value": "Is it square?"}, {"from": "gpt", "value": "Yes."}]


@pytest.fixture
def llava_source(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    root = tmp_path / "images"
    files = {"coco/a.png": write_image(root / "coco" / "a.png", (255, 0, 0)),
             "b.jpg": write_image(root / "b.jpg", (0, 0, 255), "JPEG"),
             "c.gif": write_image(root / "c.gif", (0, 255, 0), "GIF")}
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    entries = [
        {"id": "0001.x", "image": "coco/a.png", "conversations": TURNS},
        {"id": "text", "conversations": TURNS[:2]},
        {"id": "missing", "image": "nowhere.jpg", "conversations": TURNS},
        {"id": "broken", "image": "broken.jpg", "conversations": TURNS},
        {"id": "empty", "image": "b.jpg", "conversations": []},
        {"id": "unanswered", "image": "b.jpg", "conversations": TURNS[:1]},
        {"id": "two images", "image": "b.jpg", "conversations": [{"from": "human", "value": "<image> <image>"},
                                                                 {"from": "gpt", "value": "x"}]},
        "not an object",
        {"id": "no placeholder", "image": "b.jpg", "conversations": [{"from": "human", "value": "What is it?"},
                                                                     {"from": "gpt", "value": "Blue."}]},
        {"id": "gif", "image": "c.gif", "conversations": TURNS},
    ]
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(entries))
    return source, root, files


def convert_llava(source: Path, root: Path, out: Path, *extra: str) -> None:
    main(["llava", "--json", str(source), "--image-root", str(root), "--output", str(out), *extra])


def test_llava_entries_become_conversation_samples_and_bad_ones_are_counted_by_reason(llava_source, tmp_path,
                                                                                        capsys):
    source, root, files = llava_source
    convert_llava(source, root, tmp_path / "out")
    samples = read_shards(tmp_path / "out")
    assert [s["__key__"] for s in samples] == ["000000000", "000000008", "000000009"]
    first = samples[0]
    assert first["png"] == files["coco/a.png"]
    assert json.loads(first["json"]) == {"id": "0001.x", "image": "coco/a.png", "conversations": TURNS}
    assert samples[1]["jpg"] == files["b.jpg"]
    assert Image.open(io.BytesIO(samples[2]["png"])).getpixel((0, 0)) == (0, 255, 0)  # GIF re-encoded as PNG
    counts = summary(tmp_path / "out")
    assert counts["written"] == 3 and counts["skipped"] == 7
    assert counts["skipped_by_reason"] == {
        "text-only entry (no image)": 1, "missing image file": 1, "undecodable image (UnidentifiedImageError)": 1,
        "empty conversation": 1, "conversation without an assistant turn": 1,
        "more than one <image> placeholder (one image per sample)": 1, "entry is not a JSON object": 1}
    printed = capsys.readouterr().out
    assert "wrote 3 samples in 1 shards" in printed and "skipped 7 entries" in printed
    task = read_text_fields(first)
    assert task.task == "conversation" and task.target == "Yes."


def test_conversion_is_byte_identical_and_splits_shards_by_count(llava_source, tmp_path):
    source, root, _ = llava_source
    convert_llava(source, root, tmp_path / "one", "--samples-per-shard", "2")
    convert_llava(source, root, tmp_path / "two", "--samples-per-shard", "2")
    names = sorted(p.name for p in (tmp_path / "one").glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar"]
    assert summary(tmp_path / "one")["shards"] == names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_shard_byte_limit_closes_shards(llava_source, tmp_path):
    source, root, _ = llava_source
    convert_llava(source, root, tmp_path / "out", "--max-shard-bytes", "100")
    assert len(summary(tmp_path / "out")["shards"]) == 3


def test_an_output_that_already_holds_the_split_is_refused(llava_source, tmp_path):
    source, root, _ = llava_source
    convert_llava(source, root, tmp_path / "out")
    with pytest.raises(UserError, match="already holds train shards"):
        convert_llava(source, root, tmp_path / "out")
    convert_llava(source, root, tmp_path / "out", "--split", "val")
    assert summary(tmp_path / "out", "val")["written"] == 3


def test_jsonl_source_with_a_broken_line(llava_source, tmp_path):
    source, root, _ = llava_source
    lines = [json.dumps(e) for e in json.loads(source.read_text())[:2]] + ["{broken"]
    (tmp_path / "llava.jsonl").write_text("\n".join(lines) + "\n")
    convert_llava(tmp_path / "llava.jsonl", root, tmp_path / "out")
    assert summary(tmp_path / "out")["skipped_by_reason"] == {"entry is not a JSON object": 1,
                                                              "text-only entry (no image)": 1}


def test_a_source_that_is_not_a_list_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"conversations": []}')
    with pytest.raises(UserError, match="bad.json holds a JSON dict; expected a list"):
        convert_llava(tmp_path / "bad.json", tmp_path, tmp_path / "out")


def vqav2_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "val2014"
    write_image(root / "COCO_val2014_000000000042.jpg", (10, 20, 30), "JPEG")
    write_image(root / "sub" / "000000000007.png", (1, 2, 3))
    answers = ["2", "2", "two", "2", "2", "3", "2", "2", "2", "2"]
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "How many dogs?", "question_id": 420},
        {"image_id": 7, "question": "Is it dark?", "question_id": 70},
        {"image_id": 99, "question": "Where is the image?", "question_id": 990},
        {"image_id": 42, "question": "Not annotated?", "question_id": 421},
    ]}
    annotations = {"annotations": [
        {"question_id": 420, "image_id": 42, "answer_type": "number", "question_type": "how many",
         "multiple_choice_answer": "2", "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                                    for i, a in enumerate(answers)]},
        {"question_id": 70, "image_id": 7, "answer_type": "yes/no", "question_type": "is it",
         "multiple_choice_answer": "yes", "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]},
        {"question_id": 990, "image_id": 99, "answer_type": "other", "answers": [{"answer": "x"}]},
    ]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return tmp_path / "q.json", tmp_path / "a.json", root


def test_vqav2_keeps_question_id_answer_type_and_all_ten_answers(tmp_path):
    questions, annotations, root = vqav2_files(tmp_path)
    main(["vqav2", "--questions", str(questions), "--annotations", str(annotations), "--image-root", str(root),
          "--output", str(tmp_path / "out"), "--split", "val"])
    samples = read_shards(tmp_path / "out", "val")
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["question_id"] for m in metas] == [420, 70]
    assert metas[0]["answers"] == ["2", "2", "two", "2", "2", "3", "2", "2", "2", "2"]
    assert metas[0]["answer_type"] == "number" and metas[1]["answer_type"] == "yes/no"
    assert "jpg" in samples[0] and "png" in samples[1]
    fields = read_text_fields(samples[0])
    assert fields.task == "vqa" and fields.target == "2" and fields.question_id == 420 and len(fields.answers) == 10
    assert summary(tmp_path / "out", "val")["skipped_by_reason"] == {"missing image file": 1,
                                                                     "question without an annotation": 1}


def test_vqav2_files_of_the_wrong_kind_are_named(tmp_path):
    questions, annotations, root = vqav2_files(tmp_path)
    with pytest.raises(UserError, match="no 'annotations' list"):
        main(["vqav2", "--questions", str(questions), "--annotations", str(questions), "--image-root", str(root),
              "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_folder_with_a_captions_file_becomes_caption_shards(tmp_path, fmt):
    images = tmp_path / "images"
    expected = write_image(images / "one.png", (200, 0, 0))
    write_image(images / "two.webp", (0, 200, 0), "WEBP")
    rows = [("one.png", "a red square"), ("two.webp", "  a green square "), ("three.jpg", "not there"),
            ("one.png", "")]
    if fmt == "jsonl":
        text = "\n".join(json.dumps({"file_name": f, "text": c}) for f, c in rows)
    else:
        sep = "," if fmt == "csv" else "\t"
        text = "\n".join([f"image{sep}caption"] + [f"{f}{sep}{c}" for f, c in rows])
    (tmp_path / f"captions.{fmt}").write_text(text + "\n")
    main(["folder", "--images", str(images), "--captions", str(tmp_path / f"captions.{fmt}"),
          "--output", str(tmp_path / "out")])
    samples = read_shards(tmp_path / "out")
    assert [s["txt"].decode() for s in samples] == ["a red square", "a green square"]
    assert samples[0]["png"] == expected and "webp" in samples[1]
    assert read_text_fields(samples[1]).task == "caption"
    assert summary(tmp_path / "out")["skipped_by_reason"] == {"missing image file": 1, "row without a caption": 1}


def test_folder_without_a_known_column_asks_for_one(tmp_path):
    (tmp_path / "captions.csv").write_text("picture,words\na.png,hi\n")
    with pytest.raises(UserError, match="--image-column"):
        main(["folder", "--images", str(tmp_path), "--captions", str(tmp_path / "captions.csv"),
              "--output", str(tmp_path / "out")])
    write_image(tmp_path / "a.png", (0, 0, 0))
    main(["folder", "--images", str(tmp_path), "--captions", str(tmp_path / "captions.csv"), "--image-column",
          "picture", "--caption-column", "words", "--output", str(tmp_path / "out")])
    assert summary(tmp_path / "out")["written"] == 1


def secret_and_links(tmp_path: Path, root: Path) -> bytes:
    """A readable image outside ``root``, a link in ``root`` pointing at it, and a link that stays inside."""
    secret = write_image(tmp_path / "secret" / "secret.png", (7, 7, 7))
    (root / "out_link.png").symlink_to(tmp_path / "secret" / "secret.png")
    write_image(root / "inner" / "kept.png", (9, 9, 9))
    (root / "in_link.png").symlink_to(root / "inner" / "kept.png")
    return secret


def stored_bytes(folder: Path, split: str = "train") -> list[bytes]:
    return [value for s in read_shards(folder, split) for key, value in s.items() if key in ("png", "jpg", "webp")]


def test_llava_and_folder_read_no_file_outside_the_image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    secret = secret_and_links(tmp_path, root)
    names = ["../secret/secret.png", str(tmp_path / "secret" / "secret.png"), "out_link.png",
             "inner/../../secret/secret.png", "in_link.png", "inner/kept.png"]
    entries = [{"id": str(i), "image": name, "conversations": TURNS} for i, name in enumerate(names)]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    convert_llava(tmp_path / "llava.json", root, tmp_path / "llava_out")
    rows = "\n".join(json.dumps({"file_name": name, "caption": "a grey square"}) for name in names)
    (tmp_path / "captions.jsonl").write_text(rows)
    main(["folder", "--images", str(root), "--captions", str(tmp_path / "captions.jsonl"),
          "--output", str(tmp_path / "folder_out")])
    for out in (tmp_path / "llava_out", tmp_path / "folder_out"):
        assert secret not in stored_bytes(out)
        assert len(stored_bytes(out)) == 2  # the link that stays inside is followed, like the file itself
        assert summary(out)["skipped_by_reason"] == {"image path outside the image root": 4}


def test_vqav2_follows_no_link_out_of_the_image_root(tmp_path):
    questions, annotations, root = vqav2_files(tmp_path)
    (root / "COCO_val2014_000000000099.png").symlink_to(tmp_path / "secret" / "secret.png")
    secret = write_image(tmp_path / "secret" / "secret.png", (7, 7, 7))
    main(["vqav2", "--questions", str(questions), "--annotations", str(annotations), "--image-root", str(root),
          "--output", str(tmp_path / "out"), "--split", "val"])
    assert secret not in stored_bytes(tmp_path / "out", "val")
    assert summary(tmp_path / "out", "val")["skipped_by_reason"] == {"image path outside the image root": 1,
                                                                     "question without an annotation": 1}


def test_text_that_is_not_unicode_is_skipped_and_counted(llava_source, tmp_path):
    source, root, _ = llava_source
    surrogate = '[{"id": "bad", "image": "b.jpg", "conversations": [{"from": "human", "value": "<image>\\ud800?"},' \
                ' {"from": "gpt", "value": "x"}]}, {"id": "good", "image": "b.jpg", "conversations": ' \
                + json.dumps(TURNS) + "}]"
    (tmp_path / "surrogate.json").write_text(surrogate)
    convert_llava(tmp_path / "surrogate.json", root, tmp_path / "out")
    assert summary(tmp_path / "out")["skipped_by_reason"] == {"text that is not valid Unicode (a lone surrogate)": 1}
    assert [json.loads(s["json"])["id"] for s in read_shards(tmp_path / "out")] == ["good"]
    assert not list((tmp_path / "out").glob("*.partial"))
    good = json.dumps({"id": "ok", "image": "b.jpg", "conversations": TURNS}).encode()
    latin = '{"id": "caf\xe9", "image": "b.jpg"}'.encode("latin-1")
    (tmp_path / "mixed.jsonl").write_bytes(good + b"\n" + latin + b"\n" + good + b"\n")
    convert_llava(tmp_path / "mixed.jsonl", root, tmp_path / "out2")
    assert summary(tmp_path / "out2")["written"] == 2 and summary(tmp_path / "out2")["skipped"] == 1


@pytest.mark.parametrize("name", ["all_latin.jsonl", "latin.json", "captions.csv"])
def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path, name):
    (tmp_path / name).write_bytes("file_name,caption \xe9\na.png,caf\xe9\n".encode("latin-1"))
    command = ["folder", "--images", str(tmp_path), "--captions"] if name.endswith("csv") else ["llava", "--json"]
    extra = [] if name.endswith("csv") else ["--image-root", str(tmp_path)]
    with pytest.raises(UserError, match=f"{name} is not UTF-8 text"):
        main([*command, str(tmp_path / name), *extra, "--output", str(tmp_path / "out")])


def test_an_interrupted_run_leaves_only_complete_shards(tmp_path):
    from ett_lightning.convert.shard_output import ShardOutput

    output = ShardOutput(tmp_path / "out", samples_per_shard=2)
    for index in range(3):
        output.write(index, {"txt": f"caption {index}"})
    # the process dies here: no close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train-000000.tar", "train-000001.tar.partial"]
    assert len(read_shards(tmp_path / "out")) == 2
    with pytest.raises(FileExistsError, match="already holds train shards"):
        ShardOutput(tmp_path / "out")
    (tmp_path / "out" / "train-000000.tar").unlink()
    rerun = ShardOutput(tmp_path / "out", samples_per_shard=2)
    assert not list((tmp_path / "out").glob("*.partial"))
    rerun.write(0, {"txt": "again"})
    assert rerun.close()["shards"] == ["train-000000.tar"]


@pytest.mark.slow
def test_a_run_killed_mid_shard_leaves_complete_shards_and_the_rerun_says_what_to_do(tmp_path):
    root = tmp_path / "images"
    write_image(root / "a.png", (255, 0, 0))
    entries = [{"id": str(i), "image": "a.png", "conversations": TURNS} for i in range(3000)]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("ett-convert")), "llava", "--json", str(tmp_path / "llava.json"),
               "--image-root", str(root), "--output", str(out), "--samples-per-shard", "200"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "train-000001.tar").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the conversion ended before it could be killed"
    assert not (out / "train-summary.json").exists()
    complete = sorted(out.glob("train-*.tar"))
    assert len(complete) >= 2
    for shard in complete:
        with shard.open("rb") as stream:
            assert len(list(iter_tar_members(stream))) == 2 * 200  # jpg/png + json per sample, nothing cut
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 2 and "Traceback" not in rerun.stderr
    assert rerun.stderr.strip().splitlines()[-1].startswith(f"ett convert: error: {out} already holds train shards")
    assert "choose an empty --output" in rerun.stderr
