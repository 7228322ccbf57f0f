"""An FSDP2 run stopped at an epoch end and resumed from its checkpoint ends with the weights of the same run
unsharded, stopped and resumed alike (one rank in this process: weights, optimizer and scheduler state go through
FSDP2Strategy's checkpoint path), also with the root kept gathered (``reshard_after_forward=False``). Resuming
across strategies under 2 processes ends tests/resilience/test_preemption_runs.py; checkpoint folders
(``save_distributed_checkpoint``) are written by the 2-process run of test_fsdp2_runs.py, in its own processes:
saving one in this process makes later CPU training here ~2.7x slower (2 idle threads are left behind). Every run
carries a tokenizer guard that checks each step and is made to trip at step 2: it restores step 1's weights and
AdamW state (DTensors in place under FSDP2) and raises alpha, and the resumed run keeps its trips, alpha and probes
(FSDP2 restores the callbacks' state after the fit has started)."""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ett_lightning.distributed import FSDP2Strategy
from ett_lightning.health import TokenizerGuard
from ett_lightning.resilience import RNGState
from tests.conftest import free_port, make_batch, tiny_module
from tests.distributed.rank_digest import whole

EPOCH = 2


class TripAtStepTwo(TokenizerGuard):
    def measure(self, trainer, pl_module) -> dict[str, float]:
        values = super().measure(trainer, pl_module)
        return values | ({"probe_psnr_drop": 99.0} if trainer.global_step == 2 else {})


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


STRATEGIES = {"default": dict(), "root_gathered": dict(reshard_after_forward=False)}


def fit(root, sharded: dict | None, stop: bool = False,
        ckpt_path=None) -> tuple[dict[str, torch.Tensor], TokenizerGuard]:
    """Trains the tiny module to step ``2 * EPOCH`` (epochs of ``EPOCH`` fixed batches), or to the first epoch's
    end with ``stop``; saves ``root/last.ckpt`` and returns the whole weights. ``sharded``: FSDP2Strategy's options,
    None for no sharding. Also returns the run's guard."""
    L.seed_everything(0)
    module = tiny_module("ett")
    batches = [make_batch(module, seed=i) for i in range(EPOCH)]
    guard = TripAtStepTwo(every_n_steps=1, num_probe_images=2, patience=1, remedy="raise_alpha")
    callbacks = [RNGState(), guard, *([StopAfterFirstEpoch()] if stop else [])]
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy="auto" if sharded is None else FSDP2Strategy(**sharded),
                        max_steps=2 * EPOCH, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b), ckpt_path=ckpt_path)
    trainer.save_checkpoint(root / "last.ckpt")
    assert module.loss.alpha == 4 * 0.25 and guard.trips == 1  # tripped at step 2, alpha kept by the resumed run
    return {name: whole(p).detach().clone() for name, p in module.named_parameters()}, guard


def test_an_fsdp2_run_resumes_from_its_checkpoint_like_the_unsharded_run(tmp_path):
    environment = dict(os.environ)  # Lightning's process group setup writes WORLD_SIZE, RANK, ... into it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runs = {}
    try:
        for name, sharded in {**STRATEGIES, "unsharded": None}.items():
            root = tmp_path / name
            stopped, first = fit(root, sharded, stop=True)
            resumed, second = fit(root, sharded, ckpt_path=root / "last.ckpt")
            assert torch.equal(second.probes.start["indices"], first.probes.start["indices"]), name
            assert [check for check in (first.checked, second.checked)] == [2, 2 * EPOCH]
            runs[name] = (stopped, resumed)
            assert torch.load(root / "last.ckpt", weights_only=False)["global_step"] == 2 * EPOCH
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
    for strategy in STRATEGIES:
        for (sharded_weights, weights) in zip(runs[strategy], runs["unsharded"]):
            for name, value in weights.items():
                torch.testing.assert_close(sharded_weights[name], value, rtol=0, atol=1e-6, msg=f"{strategy} {name}")
        stopped, resumed = runs[strategy]
        assert any(not torch.equal(stopped[n], resumed[n]) for n in resumed), f"{strategy}: the resumed run idled"
