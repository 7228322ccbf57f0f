import os
import random
import signal

import numpy as np
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from ett_lightning.callbacks.prediction_writer import PredictionWriter
from ett_lightning.cli import checkpoint_file
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
    """Raises ``number`` in this process ``times`` times at the start of the batch making step ``at_step``, or (with
    ``in_validation``) at the start of the first validation batch after that step; in ``predict``, once at the start
    of batch ``at_step``."""

    def __init__(self, number: int, at_step: int, times: int = 1, in_validation: bool = False) -> None:
        self.number, self.at_step, self.times, self.in_validation = number, at_step, times, in_validation

    def send(self, trainer) -> None:
        if trainer.global_step == self.at_step and not trainer.sanity_checking:
            for _ in range(self.times):
                signal.raise_signal(self.number)
            self.at_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.in_validation:
            self.send(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.in_validation:
            self.send(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.at_step:
            signal.raise_signal(self.number)


def trainer(tmp_path, max_steps, *callbacks, **options):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=100)
    return Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                   callbacks=[checkpoint, PreemptionCheckpoint(), RNGState(), *callbacks], default_root_dir=tmp_path,
                   **options)


def saved_step(tmp_path) -> int:
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_saves_last_and_stops_then_ckpt_path_last_resumes(tmp_path, number):
    module = tiny_module("ett")
    data = batches(module, 8)
    first = trainer(tmp_path, 8, SendSignal(number, at_step=3))
    with pytest.raises(SIGTERMException) as stopped:
        first.fit(module, train_dataloaders=data)
    assert stopped.value.code == 128 + number  # the command's exit status: interrupted, not finished
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert first.global_step == saved["global_step"] == 4  # the signalled step finished
    assert "RNGState" in saved["callbacks"] and saved["optimizer_states"]
    assert signal.getsignal(number) is not first._signal_connector.record  # the handlers are given back
    second = trainer(tmp_path, 8)
    second.fit(tiny_module("ett"), train_dataloaders=data, ckpt_path="last")
    assert second.global_step == 8
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_signal_during_validation_saves_the_last_training_step_and_the_resumed_run_goes_on(tmp_path):
    module = tiny_module("ett")
    data = batches(module, 8)
    first = trainer(tmp_path, 8, SendSignal(signal.SIGTERM, at_step=4, in_validation=True), val_check_interval=2,
                    limit_val_batches=2)
    with pytest.raises(SIGTERMException):
        first.fit(module, train_dataloaders=data, val_dataloaders=batches(module, 2))
    assert saved_step(tmp_path) == 4
    second = trainer(tmp_path, 8, val_check_interval=2, limit_val_batches=2)
    second.fit(tiny_module("ett"), train_dataloaders=data, val_dataloaders=batches(module, 2), ckpt_path="last")
    assert second.global_step == 8 and saved_step(tmp_path) == 8


def test_a_signal_during_predict_stops_with_a_non_zero_status_and_no_predictions_file(tmp_path):
    module = tiny_module("ett")
    writer = PredictionWriter()
    with pytest.raises(SIGTERMException) as stopped:
        trainer(tmp_path, 8, SendSignal(signal.SIGTERM, at_step=1), writer).predict(module, batches(module, 4))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / writer.file_name).exists()
    trainer(tmp_path, 8, writer).predict(module, batches(module, 4))  # the control: an uninterrupted run writes it
    assert len((tmp_path / writer.file_name).read_text().splitlines()) == 8


def test_a_second_sigint_interrupts_at_once_without_a_checkpoint(tmp_path):
    module = tiny_module("ett")
    first = trainer(tmp_path, 8, SendSignal(signal.SIGINT, at_step=3, times=2))
    with pytest.raises(SystemExit) as stopped:  # Lightning's KeyboardInterrupt path: exit status 1
        first.fit(module, train_dataloaders=batches(module, 8))
    assert stopped.value.code == 1 and not (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SLURM_JOB = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "ett",
             "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost"}


def test_slurm_auto_requeue_saves_the_hpc_checkpoint_requeues_and_the_next_start_resumes_from_it(tmp_path,
                                                                                                  monkeypatch):
    """Lightning's SLURM auto-requeue, run at the agreed step boundary instead of inside its SIGUSR1 handler: a stub
    ``scontrol`` records the requeue, and the requeued start (no ``ckpt_path``, as Lightning expects) resumes."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (stubs / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    module = tiny_module("ett")
    data = batches(module, 8)
    first = trainer(tmp_path, 8, SendSignal(signal.SIGUSR1, at_step=3))
    environment = first._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    with pytest.raises(SIGTERMException):
        first.fit(module, train_dataloaders=data)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 4
    requeued = trainer(tmp_path, 8)
    requeued.fit(tiny_module("ett"), train_dataloaders=data)
    assert requeued.ckpt_path == str(tmp_path / "hpc_ckpt_1.ckpt") and requeued.global_step == 8


def test_ckpt_path_last_is_the_newer_of_last_and_a_slurm_requeue_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    assert checkpoint_file("last", str(tmp_path)) is None
    last.write_bytes(b"")
    assert checkpoint_file("last", str(tmp_path)) == last
    hpc.write_bytes(b"")
    os.utime(last, (1, 1))
    assert checkpoint_file("last", str(tmp_path)) == hpc
    os.utime(hpc, (0, 0))
    assert checkpoint_file("last", str(tmp_path)) == last
