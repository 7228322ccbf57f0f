"""Every `ett` command answers a user's mistake (a missing path, a folder where a file goes, a file of the wrong
kind, an empty file, a bad number) with `ett <command>: error: ...` naming the input, exit status 2, no traceback.

The commands run in this process through the dispatcher, as the console script runs them: an exception that
escapes is a traceback and fails the test. The console script itself is run once at the end."""

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from ett_lightning.commands.ett import main
from ett_lightning.packaged_recipes import find_recipe

GOOD_IMAGE = "good.png"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of wrong inputs: text, random bytes, an empty file, a folder, an image over PIL's pixel limit."""
    root = tmp_path_factory.mktemp("wrong_inputs")
    (root / "text.txt").write_text("hello\n")
    (root / "random.bin").write_bytes(os.urandom(3000))
    (root / "empty.bin").write_bytes(b"")
    (root / "folder").mkdir()
    (root / "broken.yaml").write_text("trainer:\n  max_steps: [1, 2\n")
    (root / "linked.yaml").symlink_to(find_recipe("ett_sft").path)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / GOOD_IMAGE)
    Image.new("L", (1, 1)).save(root / "huge.png")  # header rewritten to 30000 x 30000 px below
    data = bytearray((root / "huge.png").read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR chunk's checksum, still valid
    (root / "huge.png").write_bytes(bytes(data))
    return root


def one_line_error(argv: list[str], capsys) -> str:
    """The error line of ``ett *argv`` (which must end that way: exit status 2, the line last, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


ASK = ["ask", "--question", "What colour?"]
CASES = {  # name: (arguments, what the error line must say); {inputs}, {export}, {shards} filled in per test
    "ask image missing": ([*ASK, "--export", "{export}", "--image", "{inputs}/nope.png"], "image not found"),
    "ask image is a folder": ([*ASK, "--export", "{export}", "--image", "{inputs}/folder"], "is a directory"),
    "ask image is text": ([*ASK, "--export", "{export}", "--image", "{inputs}/text.txt"], "not a readable image"),
    "ask image too large": ([*ASK, "--export", "{export}", "--image", "{inputs}/huge.png"], "DecompressionBomb"),
    "ask export missing": ([*ASK, "--export", "{inputs}/nowhere", "--image", "{inputs}/good.png"], "nowhere"),
    "ask export no export": ([*ASK, "--export", "{inputs}/folder", "--image", "{inputs}/good.png"], "folder"),
    "ask export is a file": ([*ASK, "--export", "{inputs}/text.txt", "--image", "{inputs}/good.png"], "text.txt"),
    "ask questions missing": (["ask", "--export", "{export}", "--questions", "{inputs}/q.jsonl", "--output",
                               "{inputs}/a.jsonl"], "questions file not found"),
    "ask output in no folder": (["ask", "--export", "{export}", "--questions", "{inputs}/text.txt", "--output",
                                 "{inputs}/none/a.jsonl"], "--output"),
    "ask bad number": ([*ASK, "--export", "{export}", "--image", "{inputs}/good.png", "--max-new-tokens", "0"],
                       "--max-new-tokens must be at least 1"),
    "export checkpoint missing": (["export", "--ckpt", "{inputs}/missing.ckpt", "--out", "{inputs}/e"],
                                  "checkpoint not found"),
    "export checkpoint is text": (["export", "--ckpt", "{inputs}/text.txt", "--out", "{inputs}/e"],
                                  "text.txt is not a readable checkpoint"),
    "export checkpoint is random": (["export", "--ckpt", "{inputs}/random.bin", "--out", "{inputs}/e"],
                                    "random.bin is not a readable checkpoint"),
    "export checkpoint is empty": (["export", "--ckpt", "{inputs}/empty.bin", "--out", "{inputs}/e"],
                                   "empty.bin is not a readable checkpoint"),
    "export checkpoint is a folder": (["export", "--ckpt", "{inputs}/folder", "--out", "{inputs}/e"],
                                      "no checkpoint folder"),
    "lmms-task no shards": (["lmms-task", "--shards", "/nowhere/*.tar", "--out", "{inputs}/t"], "matches no files"),
    "lmms-task shards are a folder": (["lmms-task", "--shards", "{inputs}/folder", "--out", "{inputs}/t"],
                                      "folder"),
    "lmms-task shards are text": (["lmms-task", "--shards", "{inputs}/text.txt", "--out", "{inputs}/t"],
                                  "holds no VQA samples"),
    "lmms-task bad name": (["lmms-task", "--shards", "x", "--out", "{inputs}/t", "--name", "../up"], "--name"),
    "fit config missing": (["fit", "--config", "{inputs}/nope.yaml"], "no packaged recipe of that name"),
    "fit config is a folder": (["fit", "--config", "{inputs}/folder"], "Path is not a file"),
    "fit config is empty": (["fit", "--config", "{inputs}/empty.bin"], "empty.bin is empty"),
    "fit config is binary": (["fit", "--config", "{inputs}/random.bin"], "not a YAML text file"),
    "fit bad number": (["fit", "--config", "demo/ett_sft", "--trainer.max_steps=many"], "trainer.max_steps"),
    "fit config is plain text": (["fit", "--config", "{inputs}/text.txt"], "holds no YAML mapping"),
    "fit config is broken YAML": (["fit", "--config", "{inputs}/broken.yaml"], "is not valid YAML (line"),
    "fit seed out of range": (["fit", "-c", "demo/ett_sft", "--seed_everything=-1"], "seed_everything: -1 is out"),
    "fit shards missing": (["fit", "--config", "demo/ett_sft", "--data.init_args.train_shards=/nowhere/x.tar"],
                           "configuration problems"),
    "validate checkpoint is text": (["validate", "--config", "demo/ett_sft", "--ckpt_path={inputs}/text.txt"],
                                    "text.txt is not a readable checkpoint"),
    "test config is plain text": (["test", "--config", "{inputs}/text.txt"], "holds no YAML mapping"),
    "predict checkpoint is a folder": (["predict", "-c", "demo/t2i", "--ckpt_path={inputs}/folder",
                                        "--data.train_shards={shards}/caption/train-*.tar",
                                        "--data.val_shards={shards}/caption/val-*.tar"], "no checkpoint folder"),
    "recipes unknown": (["recipes", "copy", "ett_nope"], "no packaged recipe called 'ett_nope'"),
    "recipes copy over a file": (["recipes", "copy", "ett_sft", "{inputs}/text.txt"], "text.txt exists"),
    "recipes copy into no folder": (["recipes", "copy", "ett_sft", "{inputs}/newdir/"], "folder not found"),
    "recipes copy onto itself": (["recipes", "copy", "ett_sft", "{inputs}/linked.yaml", "--force"],
                                 "is the packaged recipe itself"),
    "recipes copy name too long": (["recipes", "copy", "ett_sft", "{inputs}/" + "b" * 300 + ".yaml"],
                                   "File name too long"),
    "convert json missing": (["convert", "llava", "--json", "{inputs}/nope.json", "--image-root", "{inputs}",
                              "--output", "{inputs}/c"], "nope.json"),
    "convert json is random": (["convert", "llava", "--json", "{inputs}/random.bin", "--image-root", "{inputs}",
                                "--output", "{inputs}/c"], "random.bin"),
    "convert captions missing": (["convert", "folder", "--images", "{inputs}/folder", "--captions",
                                  "{inputs}/nope.csv", "--output", "{inputs}/c"], "nope.csv"),
    "make-shards into a file": (["make-shards", "{inputs}/text.txt"], "text.txt"),
    "make-shards bad number": (["make-shards", "{inputs}/s", "--image-size", "0"], "--image-size"),
    "demo data is a file": (["demo", "--data", "{inputs}/text.txt", "--out", "{inputs}/d"], "text.txt"),
    "demo no seeds": (["demo", "--num-seeds", "0"], "--num-seeds"),
    "demo seed too large": (["demo", "--seeds", str(2**32)], "from 0 to 4294967295"),
    "demo bad steps": (["demo", "--tune-steps", "-3"], "--tune-steps"),
    "demo recipes missing": (["demo", "--recipes", "{inputs}/folder"], "lacks tokenizer.yaml"),
    "recipes outside the package": (["recipes", "show", "../../../etc/passwd"], "no packaged recipe called"),
    "lmms-task out is a file": (["lmms-task", "--shards", "{shards}/vqa/val-*.tar", "--out", "{inputs}/text.txt"],
                                "text.txt is a file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_user_mistake_is_one_line(case, inputs, tiny_export, synthetic_shards, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    arguments, expected = CASES[case]
    argv = [argument.format(inputs=inputs, export=tiny_export, shards=synthetic_shards) for argument in arguments]
    line = one_line_error(argv, capsys)
    assert line.startswith(f"ett {argv[0]}: error: "), line
    assert expected in line, line


def test_a_demo_over_an_earlier_demo_asks_for_reuse(tmp_path, capsys):
    (tmp_path / "out" / "align").mkdir(parents=True)
    (tmp_path / "out" / "align" / "config.yaml").write_text("trainer: {}\n")
    line = one_line_error(["demo", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")], capsys)
    assert line.startswith("ett demo: error: ") and "--reuse" in line and str(tmp_path / "out") in line
    assert not (tmp_path / "data").exists()  # refused before anything was written


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_one_line(inputs, tmp_path, capsys):
    locked = tmp_path / "locked.ckpt"
    locked.write_bytes(b"PK")
    locked.chmod(0)
    line = one_line_error(["export", "--ckpt", str(locked), "--out", str(tmp_path / "e")], capsys)
    assert line.startswith("ett export: error: ") and "locked.ckpt" in line


@pytest.mark.slow
def test_the_console_script_prints_the_line_and_no_traceback(inputs):
    ett = str(Path(sys.executable).with_name("ett"))
    run = subprocess.run([ett, "export", "--ckpt", str(inputs / "text.txt"), "--out", str(inputs / "e")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("ett export: error: ")
