"""An FSDP2 run stopped at an epoch end and resumed from its one-file checkpoint ends with the weights of the same run
unsharded, stopped and resumed alike (one rank in this process: weights, optimizer and scheduler state go through
FSDP2Strategy's checkpoint path). Resuming across strategies under 2 processes ends
tests/resilience/test_preemption_runs.py."""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ett_lightning.distributed import FSDP2Strategy
from ett_lightning.resilience import RNGState
from tests.conftest import free_port, make_batch, tiny_module
from tests.distributed.rank_digest import whole

EPOCH = 2


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def fit(root, sharded: bool, stop: bool = False, ckpt_path=None) -> dict[str, torch.Tensor]:
    """Trains the tiny module to step ``2 * EPOCH`` (epochs of ``EPOCH`` fixed batches), or to the first epoch's
    end with ``stop``; saves ``root/last.ckpt`` and returns the whole weights."""
    L.seed_everything(0)
    module = tiny_module("ett")
    batches = [make_batch(module, seed=i) for i in range(EPOCH)]
    callbacks = [RNGState(), *([StopAfterFirstEpoch()] if stop else [])]
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=FSDP2Strategy() if sharded else "auto",
                        max_steps=2 * EPOCH, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b), ckpt_path=ckpt_path)
    trainer.save_checkpoint(root / "last.ckpt")
    return {name: whole(p).detach().clone() for name, p in module.named_parameters()}


def test_an_fsdp2_run_resumes_from_its_checkpoint_like_the_unsharded_run(tmp_path):
    environment = dict(os.environ)  # Lightning's process group setup writes WORLD_SIZE, RANK, ... into it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runs = {}
    try:
        for sharded in (True, False):
            root = tmp_path / ("fsdp2" if sharded else "unsharded")
            stopped = fit(root, sharded, stop=True)
            runs[sharded] = (stopped, fit(root, sharded, ckpt_path=root / "last.ckpt"))
            assert torch.load(root / "last.ckpt", weights_only=False)["global_step"] == 2 * EPOCH
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
    for (sharded_weights, weights) in zip(runs[True], runs[False]):
        for name, value in weights.items():
            torch.testing.assert_close(sharded_weights[name], value, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(runs[True][0][n], runs[True][1][n]) for n in weights), "the resumed run did not train"
