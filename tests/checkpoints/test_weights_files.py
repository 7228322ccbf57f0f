"""Real checkpoint files carry more than tensors; their tensors load, and nothing the file names is run."""

from __future__ import annotations

import argparse
import pickle
import sys
import types

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from ett_lightning import VectorQuantizer
from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.tokenizer import PretrainedVQTokenizer, from_ett
from tests.checkpoints.hostile import CreatesFile
from tests.conftest import IMAGE_SIZE, tiny_module, tiny_tokenizer


def vanished_object():
    """An instance of a class whose module is gone by the time the checkpoint is read."""
    module = types.ModuleType("vanished_training_code")
    exec("class GPTConfig:\n    def __init__(self, n):\n        self.n = n\n", module.__dict__)
    sys.modules[module.__name__] = module
    instance = module.GPTConfig(3)
    return instance, lambda: sys.modules.pop(module.__name__)


EXTRAS = {
    "args": lambda tmp: argparse.Namespace(lr=1e-4, vq_model="VQ-16", codebook_size=16384),
    "omegaconf": lambda tmp: {"config": OmegaConf.create({"model": {"params": {"embed_dim": 8}}})},
    "callbacks": lambda tmp: {"callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5),
                                                              "dirpath": str(tmp)}},
                              "hyper_parameters": {"checkpoint_class": ModelCheckpoint}},
}


def save_with(tmp_path, weights: dict, wrapper_key: str, extras: dict):
    path = tmp_path / "model.ckpt"
    torch.save({wrapper_key: weights, **extras}, path)
    return path


@pytest.mark.parametrize("extra", [*EXTRAS, "vanished_class", "os_system"])
def test_tokenizer_weights_load_from_checkpoints_carrying_objects(tmp_path, extra):
    source = tiny_tokenizer(VectorQuantizer)
    marker = tmp_path / "pwned"
    if extra == "vanished_class":
        instance, forget = vanished_object()
        extras = {"config": instance}
    elif extra == "os_system":
        extras, forget = {"payload": CreatesFile(str(marker))}, None
    else:
        extras, forget = EXTRAS[extra](tmp_path), None
        extras = extras if isinstance(extras, dict) and extra != "args" else {"args": extras}
    path = save_with(tmp_path, from_ett(source.state_dict(), "taming"), "state_dict", extras)
    if forget:
        forget()
    with pytest.raises(pickle.UnpicklingError):  # what torch refuses, and why this loader exists
        torch.load(path, weights_only=True)

    loaded = PretrainedVQTokenizer(str(path), format="taming", resolution=IMAGE_SIZE)
    assert not marker.exists(), "loading ran code from the checkpoint"
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_init_from_a_lightning_style_checkpoint_with_callbacks_and_hidden_code(tmp_path):
    source = tiny_module("ett")
    torch.manual_seed(5)
    for p in source.parameters():
        p.data.normal_()
    marker = tmp_path / "created"
    instance, forget = vanished_object()
    checkpoint = {"state_dict": source.state_dict(), "epoch": 1, "global_step": 10,
                  "callbacks": {"ModelCheckpoint{'monitor': None}": {"dirpath": str(tmp_path), "cls": ModelCheckpoint}},
                  "hyper_parameters": {"args": argparse.Namespace(x=1), "config": OmegaConf.create({"a": 1}),
                                       "run": CreatesFile(str(marker)), "model_config": instance}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    forget()

    target = tiny_module("ett", init_from=str(tmp_path / "last.ckpt"))
    assert not marker.exists()
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_a_pickled_object_instead_of_a_state_dict_is_a_clear_error(tmp_path):
    marker = tmp_path / "created"
    torch.save(CreatesFile(str(marker)), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"holds a pickled posix\.system object, not a state dict|"
                                         r"holds a pickled nt\.system object, not a state dict"):
        load_state_dict_file(tmp_path / "model.pt")
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_state_dict_file(tmp_path / "model.ckpt")


def test_a_small_file_declaring_huge_weights_is_refused_before_a_model_is_built_to_them(tmp_path):
    """A broadcast view pickles its small storage with zero strides: 4 bytes can declare a 2**22-wide conv, and a
    tokenizer whose architecture is read off the weights would be built that wide (gigabytes) before any check."""
    state = tiny_tokenizer(VectorQuantizer).state_dict()
    state["encoder.down.1.block.0.conv1.weight"] = torch.zeros(()).expand(2**22, 16, 3, 3)
    torch.save({"state_dict": from_ett(state, "taming")}, tmp_path / "huge.ckpt")
    assert (tmp_path / "huge.ckpt").stat().st_size < 10**7  # against 2.4 GB declared
    with pytest.raises(ValueError, match=r"conv1.weight declares shape \(4194304, 16, 3, 3\) over 4 bytes"):
        PretrainedVQTokenizer(str(tmp_path / "huge.ckpt"), format="taming", resolution=IMAGE_SIZE)
