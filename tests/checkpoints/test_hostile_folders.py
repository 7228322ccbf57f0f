"""Tampered checkpoint folders (FSDP2's ``save_distributed_checkpoint``): a hostile ``.metadata``, a hostile non-tensor
entry, a hostile ``meta.pt``, an index pointing out of the folder. Each is refused with one line by every reader
(``init_from`` / weights files, the resume check, ``ett export``), and a marker proves no code ran.

The folders are written by torch.distributed.checkpoint as Lightning writes them (tensors under ``state_dict``,
optimizer states with non-tensor entries beside them, ``meta.pt``); the 2-process FSDP2 runs of
tests/distributed read real Lightning folders through the same checks.
"""

from __future__ import annotations

import copy
import io
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import MetadataIndex

from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.checkpoints.folder import MetadataUnpickler, check_folder, folder_weights
from ett_lightning.commands.ett import main as ett_main
from ett_lightning.resilience.checkpoint_checks import checkpoint_hyperparameters
from tests.checkpoints.hostile import CreatesFile


def save_folder(folder: Path, optimizer_extra: object = None) -> dict[str, torch.Tensor]:
    """A checkpoint folder as Lightning's model-parallel strategy writes one, in this process; returns its weights."""
    weights = {"projector.net.0.weight": torch.randn(4, 3), "projector.net.0.bias": torch.randn(4)}
    optimizer = {"state": {"projector.net.0.weight": {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4, 3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": ["projector.net.0.weight"]}]}
    if optimizer_extra is not None:
        optimizer["param_groups"][0]["hook"] = optimizer_extra
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        dcp.save({"state_dict": weights, "optimizer_0": optimizer}, storage_writer=dcp.FileSystemWriter(folder),
                 no_dist=True)
    torch.save({"global_step": 3, "hyper_parameters": {"stage": "ett"}}, folder / "meta.pt")
    return weights


def test_a_folder_of_data_reads_back(tmp_path):
    weights = save_folder(tmp_path / "ckpt")
    loaded = load_state_dict_file(tmp_path / "ckpt")
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert checkpoint_hyperparameters(tmp_path / "ckpt") == {"stage": "ett"}


def test_a_hostile_index_is_refused_by_every_reader(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "ckpt"
    save_folder(folder)
    (folder / ".metadata").write_bytes(pickle.dumps(CreatesFile(str(marker))))
    for read in (load_state_dict_file, checkpoint_hyperparameters, folder_weights):
        with pytest.raises(ValueError, match="not a readable checkpoint-folder index .*posix.system is not part of"):
            read(folder)
    with pytest.raises(SystemExit) as exit_:
        ett_main(["export", "--ckpt", str(folder), "--out", str(tmp_path / "export")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.strip().splitlines()[-1].startswith("ett export: error: ")
    assert "checkpoint-folder index" in error
    assert not marker.exists() and not (tmp_path / "export").exists()
    with pytest.raises(AttributeError):  # the control: torch's own reader runs the file's code (os.system -> 0)
        dcp.FileSystemReader(str(folder)).read_metadata()
    assert marker.exists()


def test_a_hostile_entry_beside_the_weights_is_refused_before_lightning_would_unpickle_it(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "ckpt"
    save_folder(folder, optimizer_extra=CreatesFile(str(marker)))
    with pytest.raises(ValueError, match="entry 'optimizer_0.param_groups.0.hook' holds more than data "
                                         ".*unsupported GLOBAL posix.system"):
        checkpoint_hyperparameters(folder)  # the --ckpt_path check, before FSDP2Strategy or Lightning read it
    with pytest.raises(ValueError, match="holds more than data"):
        check_folder(folder)  # what FSDP2Strategy.load_checkpoint calls on a folder
    assert not marker.exists()
    state = {"optimizer_0": {"param_groups": [{"hook": None}]}}  # the control: torch reads it with weights_only=False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)
    assert marker.exists()


def test_a_hostile_meta_file_is_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "ckpt"
    save_folder(folder)
    torch.save({"hyper_parameters": CreatesFile(str(marker))}, folder / "meta.pt")
    with pytest.raises(ValueError, match="meta.pt holds more than data or is no torch file"):
        checkpoint_hyperparameters(folder)
    assert not marker.exists()


def rewritten_index(folder: Path, edit) -> None:
    with (folder / ".metadata").open("rb") as file:
        metadata = MetadataUnpickler(file).load()
    edit(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def test_an_index_pointing_out_of_the_folder_or_past_its_bytes_is_refused(tmp_path):
    (tmp_path / "outside.distcp").write_bytes(b"\0" * 1024)
    folder = tmp_path / "ckpt"
    save_folder(folder)

    def outside(metadata):
        for where in metadata.storage_data.values():
            where.relative_path = "../outside.distcp"

    rewritten_index(folder, outside)
    with pytest.raises(ValueError, match="is not stored as plain bytes in a file of the folder"):
        load_state_dict_file(folder)

    save_folder(huge := tmp_path / "huge")

    def enormous(metadata):
        metadata.state_dict_metadata["state_dict.projector.net.0.weight"].size = torch.Size([2**20, 2**20])

    rewritten_index(huge, enormous)
    with pytest.raises(ValueError, match="the index lists .* bytes of tensors, the folder holds"):
        load_state_dict_file(huge)  # refused before a 4 TiB tensor is allocated


def test_a_second_place_for_a_data_entry_is_checked_too(tmp_path):
    """Two index places for one non-tensor entry: torch's reader may take either, so both must hold only data."""
    marker, folder = tmp_path / "ran", tmp_path / "ckpt"
    save_folder(folder, optimizer_extra="benign")
    hostile = io.BytesIO()
    torch.save(CreatesFile(str(marker)), hostile)
    (folder / "extra.distcp").write_bytes(hostile.getvalue())
    key = "optimizer_0.param_groups.0.hook"

    def second_place(metadata):
        benign = next(where for index, where in metadata.storage_data.items() if index.fqn == key)
        other = copy.copy(benign)
        other.relative_path, other.offset, other.length = "extra.distcp", 0, len(hostile.getvalue())
        metadata.storage_data[MetadataIndex(key, torch.Size([0]))] = other

    rewritten_index(folder, second_place)
    with pytest.raises(ValueError, match=f"entry '{key}' holds more than data"):
        checkpoint_hyperparameters(folder)
    assert not marker.exists()


def test_negative_sizes_cannot_hide_a_huge_tensor(tmp_path):
    save_folder(folder := tmp_path / "ckpt")

    def cancelled(metadata):
        metadata.state_dict_metadata["state_dict.projector.net.0.weight"].size = torch.Size([2**15, 2**15])
        metadata.state_dict_metadata["state_dict.projector.net.0.bias"].size = torch.Size([-(2**30)])

    rewritten_index(folder, cancelled)
    with pytest.raises(ValueError, match="has a negative size"):
        load_state_dict_file(folder)


def test_hyperparameters_that_would_import_or_run_code_are_refused_by_ett_export(tmp_path, capsys):
    """The folder and the file hold only data, but their hyper_parameters are a recipe Lightning would follow:
    importing any class_path and building an LLM with trust_remote_code."""
    marker = tmp_path / "ran"
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (llm / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoConfig": "custom.Config"}}')
    cases = {"trust_remote_code": ({"class_path": "ett_lightning.models.LanguageModel",
                                    "init_args": {"pretrained": str(llm), "trust_remote_code": True}},
                                   "language_model.init_args.trust_remote_code asks to run the LLM's shipped code"),
             "import": ({"class_path": "this.Anything"}, "names 'this.Anything', a class outside ett_lightning"),
             "init_from": ({"class_path": "ett_lightning.models.LanguageModel"}, "init_from names a file")}
    for name, (language_model, message) in cases.items():
        hyperparameters = {"_class_path": "ett_lightning.module.ETTModule", "language_model": language_model,
                           "stage": "ett", **({"init_from": "/etc/passwd"} if name == "init_from" else {})}
        save_folder(folder := tmp_path / name / "last.ckpt")
        torch.save({"global_step": 1, "hyper_parameters": hyperparameters}, folder / "meta.pt")
        torch.save({"state_dict": {}, "hyper_parameters": hyperparameters}, one_file := tmp_path / f"{name}.ckpt")
        for checkpoint in (folder, one_file):
            with pytest.raises(SystemExit) as exit_:
                ett_main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "out")])
            error = capsys.readouterr()
            assert exit_.value.code == 2 and message in error.err and "Traceback" not in error.err
            assert "Beautiful is better" not in error.out
    assert not marker.exists() and "this" not in sys.modules
