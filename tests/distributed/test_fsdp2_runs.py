"""``--trainer.strategy=fsdp2`` with the demo stage-2 recipe as shipped (callbacks, validation, logging,
checkpoints on) under 2 gloo processes started by torchrun, against the same run under DDP: the same losses step by
step, the same weights at the end, and ``ett export`` of the FSDP2 checkpoint equal to the DDP one's. The FSDP2 run
writes its checkpoint as a folder of per-rank files (``save_distributed_checkpoint``), which export reads; the
default one-file checkpoint is DDP's format (resumed across strategies at the end of
tests/resilience/test_preemption_runs.py). The other stages run under FSDP2 in test_ddp_runs.py; resuming an FSDP2
run, from either checkpoint form, is tested in one process in test_fsdp2_resume.py. Both runs carry a tokenizer
guard that only rank 1 sees tripping at step 4 (tests/health/one_rank_breach.py): both ranks of each run restore
step 2's weights and optimizer state, lower the rate at the same step and train on, and the two strategies still
train alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ett_lightning import ETTLoss
from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.commands.ett import main as ett_main
from ett_lightning.module import ETTModule
from ett_lightning.resilience.checkpoint_checks import checkpoint_hyperparameters, folder_needs_fsdp2
from tests.cli_runs import run_torchrun, two_processes
from tests.distributed.rank_digest import rank_digest
from tests.distributed.test_ddp_runs import recipe, small
from tests.health.one_rank_breach import assert_the_ranks_agreed, guard_args

STEPS = 6
FOLDER_CHECKPOINTS = ["--trainer.strategy=ett_lightning.distributed.FSDP2Strategy",
                      "--trainer.strategy.save_distributed_checkpoint=true"]


def step_losses(root: Path) -> list[float]:
    events = EventAccumulator(str(root))
    events.Reload()
    return [event.value for event in events.Scalars("train/total")]


@pytest.mark.slow
@pytest.mark.ddp
def test_fsdp2_trains_like_ddp_and_exports_the_same_weights(tmp_path, synthetic_shards, monkeypatch):
    runs = {}
    for strategy, options in (("ddp", ["--trainer.strategy=ddp"]), ("fsdp2", FOLDER_CHECKPOINTS)):
        root = tmp_path / strategy
        run = run_torchrun(["fit", *recipe("ett"), *two_processes(), *options,
                            *small(synthetic_shards, "caption", root, STEPS), "--trainer.log_every_n_steps=1",
                            *guard_args(tmp_path / f"{strategy}_checks"), *rank_digest(tmp_path / f"{strategy}_ranks")],
                           cwd=tmp_path)
        assert_the_ranks_agreed(tmp_path / f"{strategy}_checks", run.stdout, root, STEPS)
        params = [torch.load(tmp_path / f"{strategy}_ranks" / f"rank{r}.pt")["params"] for r in (0, 1)]
        assert all(torch.equal(v, params[1][k]) for k, v in params[0].items()), f"{strategy}: ranks differ"
        runs[strategy] = {"root": root, "losses": step_losses(root), "params": params[0]}

    ddp, fsdp2 = runs["ddp"], runs["fsdp2"]
    assert len(fsdp2["losses"]) == STEPS
    assert fsdp2["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    assert fsdp2["params"].keys() == ddp["params"].keys()
    for name, value in ddp["params"].items():
        torch.testing.assert_close(fsdp2["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)

    folder = fsdp2["root"] / "checkpoints" / "last.ckpt"
    assert (folder / ".metadata").is_file()  # a folder of per-rank files, which what reads checkpoints reads too:
    saved = load_state_dict_file(folder)  # init_from and tokenizer weights
    assert all(torch.equal(saved[name], value) for name, value in fsdp2["params"].items())
    one_file = ddp["root"] / "checkpoints" / "last.ckpt"
    assert checkpoint_hyperparameters(folder) == checkpoint_hyperparameters(one_file)  # the resume check
    assert folder_needs_fsdp2(folder, "fsdp2") is None and folder_needs_fsdp2(one_file, "ddp") is None
    assert folder_needs_fsdp2(folder, {"class_path": "ett_lightning.distributed.FSDP2Strategy"}) is None
    assert "only FSDP2Strategy resumes: add --trainer.strategy=fsdp2" in folder_needs_fsdp2(folder, "ddp")
    monkeypatch.chdir(tmp_path)
    exports = {}
    for strategy, run in runs.items():
        out = tmp_path / f"export_{strategy}"
        ett_main(["export", "--ckpt", str(run["root"] / "checkpoints/last.ckpt"), "--out", str(out)])
        exports[strategy] = ETTModule.from_export(str(out), loss=ETTLoss(perceptual_weight=0.0)).state_dict()
    for name, value in exports["ddp"].items():
        torch.testing.assert_close(exports["fsdp2"][name], value, rtol=1e-4, atol=1e-5, msg=name)
