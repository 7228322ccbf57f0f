import random
import signal

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from ett_lightning.resilience import AtomicCheckpointIO, PreemptionCheckpoint, RNGState
from tests.conftest import make_batch, tiny_module


def test_atomic_save_round_trips_and_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.arange(4)}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.arange(4))

    def crash_mid_write(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_rng_state_restores_every_generator():
    callback = RNGState()
    state = callback.state_dict()
    first = (random.random(), np.random.rand(), torch.rand(1))
    callback.load_state_dict(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == first


def batches(module, count):
    return DataLoader([make_batch(module, batch_size=2, seed=i) for i in range(count)], batch_size=None,
                      collate_fn=lambda batch: batch)


class SendSignal(Callback):
    def __init__(self, number: int, at_step: int) -> None:
        self.number, self.at_step = number, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            signal.raise_signal(self.number)


def trainer(tmp_path, max_steps, *callbacks):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=100)
    return Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                   callbacks=[checkpoint, PreemptionCheckpoint(), RNGState(), *callbacks], default_root_dir=tmp_path)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_last_and_stops_then_ckpt_path_last_resumes(tmp_path, number):
    module = tiny_module("ett")
    data = batches(module, 8)
    first = trainer(tmp_path, 8, SendSignal(number, at_step=3))
    if number == signal.SIGTERM:  # Lightning ends a SIGTERM-ed fit with SIGTERMException (exit status 0)
        with pytest.raises(SIGTERMException):
            first.fit(module, train_dataloaders=data)
    else:
        first.fit(module, train_dataloaders=data)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert first.global_step == saved["global_step"] == 4
    assert "RNGState" in saved["callbacks"] and saved["optimizer_states"]
    second = trainer(tmp_path, 8)
    second.fit(tiny_module("ett"), train_dataloaders=data, ckpt_path="last")
    assert second.global_step == 8
