"""Tampered exports: each is refused with one line naming the problem, and a marker file proves no code ran.

An export is what people download and share. Its manifest names classes and their arguments, and its LLM folder is a
Hugging Face directory whose config may ask to run Python it ships (``auto_map``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import dynamic_module_utils

from ett_lightning.checkpoints.export import load_export
from ett_lightning.checkpoints.registry import ExportError
from ett_lightning.evaluation import InferenceModel
from ett_lightning.evaluation.ask import main as ask_main
from tests.checkpoints.hostile import CreatesFile
from tests.conftest import copy_of_export

REMOTE_CODE = "import pathlib\npathlib.Path({marker!r}).touch()\n"


def ships_code(export: Path, marker: Path, model_type: str | None = None) -> None:
    """Puts a module that touches ``marker`` into the export's LLM folder and points its config's and tokenizer
    config's ``auto_map`` at it, as a model with custom code does (``model_type`` replaces the known one)."""
    folder = export / "language_model"
    (folder / "custom.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    for name, key in (("config.json", "AutoModelForCausalLM"), ("tokenizer_config.json", "AutoTokenizer")):
        config = json.loads((folder / name).read_text())
        config["auto_map"] = {key: "custom.Model" if key != "AutoTokenizer" else ["custom.Tokenizer", None],
                              "AutoConfig": "custom.Config"}
        if model_type and name == "config.json":
            config["model_type"] = model_type
        (folder / name).write_text(json.dumps(config))


def test_remote_code_asked_for_by_the_manifest_is_refused_and_never_runs(tiny_export, tmp_path):
    marker = tmp_path / "ran"
    bad = copy_of_export(tiny_export, tmp_path / "bad", lambda m: m["language_model"].update(trust_remote_code=True))
    ships_code(bad, marker)
    with pytest.raises(ExportError, match="language_model gives LanguageModel arguments an export may not set: "
                                          "trust_remote_code"):
        load_export(bad)
    assert not marker.exists()


def test_code_shipped_with_a_known_architecture_is_not_run(tiny_export, tmp_path):
    """The config still names qwen2: the LLM is built from transformers' own class and the shipped file is ignored."""
    marker = tmp_path / "ran"
    shipped = copy_of_export(tiny_export, tmp_path / "shipped")
    ships_code(shipped, marker)
    assert load_export(shipped)["language_model"].causal_lm.__class__.__module__.startswith("transformers.")
    assert not marker.exists()


def test_code_needed_by_an_unknown_architecture_runs_only_when_the_caller_trusts_it(tiny_export, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where it copies code
    marker = tmp_path / "ran"
    custom = copy_of_export(tiny_export, tmp_path / "custom")
    ships_code(custom, marker, model_type="not_in_transformers")
    with pytest.raises(ExportError, match="needs code shipped with the export .* refused"):
        load_export(custom)
    assert not marker.exists()
    with pytest.raises(ExportError, match="has no attribute 'Config'"):  # it was imported, and defines no model
        load_export(custom, trust_remote_code=True)
    assert marker.exists(), "the control: with the caller's consent, transformers imports the shipped file"


@pytest.mark.parametrize("where,class_path", [
    ("tokenizer", "this.Anything"),  # importing `this` prints the Zen of Python: import-time code
    ("tokenizer", "subprocess.run"),
    ("quantizer", "os.system"),
    ("tokenizer", ".relative.Tokenizer"),
    ("tokenizer", "ett_lightning.tokenizer.PretrainedVQTokenizer"),  # a real tokenizer that reads a weights path
    ("quantizer", ["not", "a", "string"]),
])
def test_class_paths_outside_the_registry_import_nothing(tiny_export, tmp_path, capsys, where, class_path):
    def edit(manifest):
        spec = manifest["tokenizer"] if where == "tokenizer" else manifest["tokenizer"]["quantizer"]
        spec["class_path"] = class_path

    modules_before = set(sys.modules)
    with pytest.raises(ExportError, match=f"names .* which is not a {where} an export may name"):
        load_export(copy_of_export(tiny_export, tmp_path / "bad", edit))
    assert set(sys.modules) == modules_before, "a module named by the manifest was imported"
    assert "Beautiful is better than ugly" not in capsys.readouterr().out


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["tokenizer"]["arch"].update(weights="{hostile}"), "tokenizer.arch gives VQTokenizer arguments an "
                                                                   "export may not set: weights"),
    (lambda m: m["tokenizer"]["quantizer"]["init_args"].update(codebook_size=True), "codebook_size: expected a whole"),
    (lambda m: m["tokenizer"]["quantizer"]["init_args"].update(codebook_size=2**24), "does not hold the weights of "
                                                                                     "the VQTokenizer"),
    (lambda m: m["projector"].update(out_dim=10**12), "projector.out_dim: expected a whole number"),
    (lambda m: m["projector"].update(activation="os.system"), "projector gives MLPProjector arguments"),
    (lambda m: m.update(run_after_loading="rm -rf /"), "entries this ett_lightning does not read: run_after_loading"),
    (lambda m: m.update(stage="pwn"), "stage: expected one of align, ett, posttrain"),
    (lambda m: m.update(format_version=True), "format_version True"),
    (lambda m: m["inputs"]["prompt"]["templates"].update(vqa="{question.__class__.__init__}"),
     "templates.vqa: placeholder"),
    (lambda m: m["tokenizer"].update(source_format="../../etc"), "source_format '../../etc' is none of"),
])
def test_arguments_a_file_may_not_give_are_refused(tiny_export, tmp_path, edit, message):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": CreatesFile(str(marker))}, hostile)

    def with_hostile_path(manifest):
        edit(manifest)
        arch = manifest["tokenizer"]["arch"]
        if arch.get("weights") == "{hostile}":
            arch["weights"] = str(hostile)

    with pytest.raises(ExportError, match=message):
        load_export(copy_of_export(tiny_export, tmp_path / "bad", with_hostile_path))
    assert not marker.exists()


def test_a_link_out_of_the_export_is_refused(tiny_export, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((tiny_export / "projector" / "model.safetensors").read_bytes())
    linked = copy_of_export(tiny_export, tmp_path / "linked")
    (linked / "projector" / "model.safetensors").unlink()
    (linked / "projector" / "model.safetensors").symlink_to(outside)
    with pytest.raises(ExportError, match="links to .*outside the export"):
        load_export(linked)


def test_manifests_that_are_not_json_objects_are_refused(tiny_export, tmp_path):
    bad = copy_of_export(tiny_export, tmp_path / "bad")
    for content, message in ((b"\xff\xfe", "not JSON in UTF-8"), (b"[1, 2]", "holds a list"),
                             (b"[" * 100_000, "not JSON")):
        (bad / "ett_export.json").write_bytes(content)
        with pytest.raises(ExportError, match=message):
            load_export(bad)


def test_ett_ask_ends_a_refused_export_with_one_line(tiny_export, tmp_path, capsys):
    """The command as users run it: exit status 2, one line naming the problem, nothing imported."""
    bad = copy_of_export(tiny_export, tmp_path / "bad", lambda m: m["tokenizer"].update(class_path="this.Anything"))
    image = tmp_path / "q.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(SystemExit) as exit_:
        ask_main(["--export", str(bad), "--image", str(image), "--question", "what?"])
    output = capsys.readouterr()
    assert exit_.value.code == 2 and "Beautiful is better" not in output.out
    assert output.err.strip().splitlines()[-1].startswith("ett ask: error: ")
    assert "not a tokenizer an export may name" in output.err and "this" not in sys.modules


def test_ett_ask_answers_a_missing_export_or_image_in_one_line(tiny_export, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("not an image")
    cases = [(tmp_path / "nowhere", tmp_path / "ok.png", "not a directory written by `ett export`"),
             (tiny_export, tmp_path / "missing.png", "image not found"),
             (tiny_export, tmp_path / "notes.png", "not a readable image (UnidentifiedImageError)"),
             (tiny_export, tmp_path, "is a directory, not an image")]
    for export, image, message in cases:
        with pytest.raises(SystemExit) as exit_:
            ask_main(["--export", str(export), "--image", str(image), "--question", "what?"])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_an_untampered_export_still_loads(tiny_export):
    assert InferenceModel.from_export(str(tiny_export)).inputs.layout == "image_first"


@pytest.mark.parametrize("tamper,message", [
    (lambda e: (e / "projector" / "model.safetensors").unlink() or os.mkfifo(e / "projector" / "model.safetensors"),
     "is neither a regular file nor a folder"),  # a FIFO would block the reader for ever
    (lambda e: (e / "loop_a").symlink_to(e / "loop_b") or (e / "loop_b").symlink_to(e / "loop_a"),
     "an entry cannot be resolved"),
    (lambda e: (e / "language_model" / "tokenizer_config.json").unlink(), "holds no tokenizer_config.json"),
    (lambda e: (e / "language_model" / "config.json").write_text("[1]"), "does not load as the export's LLM"),
    (lambda e: os.makedirs(e / "/".join(["d"] * 40)), "nested more than 16 folders deep"),
])
def test_export_files_that_would_hang_mislead_or_crash_the_loader_are_refused(tiny_export, tmp_path, tamper,
                                                                               message):
    bad = copy_of_export(tiny_export, tmp_path / "bad")
    tamper(bad)
    with pytest.raises(ExportError, match=message):
        load_export(bad)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["projector"].update(depth=2**24), "projector.depth: expected a whole number from 1 to 1024"),
    (lambda m: m["tokenizer"]["arch"].update(num_res_blocks=2**20), "num_res_blocks: expected a whole number from 1"),
    (lambda m: m["inputs"]["image"].update(size=2**24), "inputs.image.size: expected an image side"),
    (lambda m: m["tokenizer"]["arch"].update(ch_mult=[]), "ch_mult: expected a list of 1 to 16"),
    (lambda m: m["tokenizer"].update(quantizer={"class_path": "ett_lightning.tokenizer.LookupFreeQuantizer",
                                                "init_args": {"bits": 40}}), "bits: expected a number of bits"),
    (lambda m: m["tokenizer"].update(quantizer={"class_path": "ett_lightning.tokenizer.FiniteScalarQuantizer",
                                                "init_args": {"levels": [2**20] * 16}}), "at most 2\\*\\*20 codes"),
])
def test_sizes_that_would_build_for_ever_are_refused_before_building(tiny_export, tmp_path, edit, message):
    with pytest.raises(ExportError, match=message):
        load_export(copy_of_export(tiny_export, tmp_path / "bad", edit))
