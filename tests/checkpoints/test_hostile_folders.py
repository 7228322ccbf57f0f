"""Tampered checkpoint folders (FSDP2's ``save_distributed_checkpoint``): a hostile ``.metadata``, a hostile non-tensor
entry, a hostile ``meta.pt``, an index pointing out of the folder. Each is refused with one line by every reader
(``init_from`` / weights files, the resume check, ``ett export``), and a marker proves no code ran.

The folders are written by torch.distributed.checkpoint as Lightning writes them (tensors under ``state_dict``,
optimizer states with non-tensor entries beside them, ``meta.pt``); the 2-process FSDP2 runs of
tests/distributed read real Lightning folders through the same checks.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.checkpoints.folder import MetadataUnpickler, check_folder, folder_weights
from ett_lightning.cli import main as cli_main
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
        cli_main(["export", "--ckpt", str(folder), "--out", str(tmp_path / "export")])
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
