"""Stop signals as clusters and terminals send them, to the demo stage-2 recipe as shipped (callbacks, validation,
logging, checkpoints on) under 2 gloo processes with a loader worker each: SIGTERM to rank 0 only, to rank 1 only and
to the whole process group (loader workers included), each during training and during validation, at seeded
moments (the last of these sharded by FSDP2); then a single process with 2 workers. Every run must end within 60 s
of the signal, every process gone, with one complete ``last.ckpt`` at the step it reports.

The cases form one chain: each run resumes the previous one's ``last.ckpt`` with ``--ckpt_path=last`` (so every case
is also a resume test, across world sizes and strategies too), and a last run resumes it under FSDP2
(``--trainer.strategy=fsdp2``) to ``max_steps``, with the recipe's validation, metrics and final checkpoint. Each run
has a hard timeout, so a hang fails the test with every process's stack. ``ETT_SIGNAL_SEEDS=0,1,2`` draws other
moments.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.cli_runs import ROOT, run_lightning, two_processes
from tests.distributed.rank_digest import rank_digest

CASES = [("rank0", "train"), ("rank1", "train"), ("group", "train"),
         ("rank0", "validation"), ("rank1", "validation"), ("group", "validation")]
MAX_STEPS = 40
SEEDS = [int(seed) for seed in os.environ.get("ETT_SIGNAL_SEEDS", "0").split(",")]


def run_args(shards: Path, root: Path, processes: list[str]) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *processes,
            f"--data.train_shards={shards}/caption/train-*.tar", f"--data.val_shards={shards}/caption/val-*.tar",
            "--data.init_args.batch_size=2", "--data.init_args.image_size=32",
            "--model.init_args.tokenizer.init_args.image_size=32", f"--trainer.max_steps={MAX_STEPS}",
            "--trainer.val_check_interval=4", "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={root}",
            "--ckpt_path=last"]


def signal_at(target: str, phase: str, seed: int, directory: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.resilience.signal_moments.SignalAtMoment",
            f"--trainer.callbacks.target={target}", f"--trainer.callbacks.phase={phase}",
            f"--trainer.callbacks.seed={seed}", f"--trainer.callbacks.directory={directory}"]


def checkpoint_step(root: Path) -> int:
    return torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def assert_stopped_cleanly(case: str, run, sent: dict, ended: float, root: Path, world_size: int) -> int:
    """The run ended within 60 s of the signal with status 143 (128 + SIGTERM: interrupted, not finished), nothing
    left running, and one complete last.ckpt at the step it reports; returns that step."""
    output = run.stdout
    assert run.returncode == 128 + signal.SIGTERM, f"{case}: exit status {run.returncode}\n{output[-4000:]}"
    assert ended - sent["time"] < 60, f"{case}: ended {ended - sent['time']:.0f} s after the signal"
    assert not outlived(run.process_group), f"{case}: a rank or loader worker outlived the run"
    saved = re.search(r"SIGTERM on ranks? ([\d, ]+) of (\d): saved (\S+) at step (\d+)", output)
    assert saved, f"{case}: no checkpoint reported\n{output[-4000:]}"
    ranks = [int(rank) for rank in saved[1].split(", ")]
    expected = {"rank0": [0], "rank1": [1], "group": list(range(world_size))}[case.split("/")[0]]
    assert ranks == expected and int(saved[2]) == world_size, f"{case}: {saved[0]}"
    stage = "validate" if case.endswith("validation") else "train"
    for rank in ranks:
        assert f"rank {rank}: SIGTERM received during {stage}" in output, f"{case}: rank {rank}\n{output[-4000:]}"
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"], case
    assert checkpoint_step(root) == int(saved[4]), case
    assert "Traceback" not in output and "killed by signal" not in output, f"{case}\n{output[-4000:]}"
    return int(saved[4])


def outlived(process_group: int, wait: float = 5) -> bool:
    """Whether a process of the run's group is still there after ``wait`` s (orphans take a moment to be reaped)."""
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            os.killpg(process_group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def signalled_run(args: list[str], tmp_path: Path, moment: Path):
    run = run_lightning(args, cwd=tmp_path, timeout=150, check=False)
    ended = time.time()
    sent = json.loads((moment / "sent.json").read_text())
    return run, sent, ended


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("seed", SEEDS)
def test_stop_signals_to_any_process_in_any_phase_save_once_and_resume(tmp_path, synthetic_shards, seed):
    root = tmp_path / "run"
    step = 0
    chain = [(f"{target}/{phase}", two_processes(), 2, target, phase) for target, phase in CASES]
    chain[-1] = ("group/sharded by FSDP2, validation", [*two_processes(), "--trainer.strategy=fsdp2"], 2, *CASES[-1])
    chain.append(("group/train one process, 2 workers", ["--trainer.devices=1", "--data.init_args.num_workers=2"],
                  1, "group", "train"))
    for index, (case, processes, world_size, target, phase) in enumerate(chain):
        moment = tmp_path / f"signal{index}"
        args = [*run_args(synthetic_shards, root, processes), *signal_at(target, phase, seed * 100 + index, moment)]
        run, sent, ended = signalled_run(args, tmp_path, moment)
        if index:
            assert "Restored all states from the checkpoint" in run.stdout, f"{case}: did not resume"
        saved = assert_stopped_cleanly(case, run, sent, ended, root, world_size)
        assert saved > step, f"{case}: saved step {saved} after step {step}"
        step = saved

    ranks = tmp_path / "ranks"
    sharded = [*two_processes(), "--trainer.strategy=fsdp2"]  # a DDP run resumed sharded: the same checkpoint format
    final = run_lightning([*run_args(synthetic_shards, root, sharded), *rank_digest(ranks)], cwd=tmp_path, timeout=150)
    assert "Restored all states from the checkpoint" in final.stdout
    parameters = [torch.load(ranks / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert all(p["world_size"] == 2 and p["step"] == MAX_STEPS for p in parameters)
    for name, value in parameters[0]["params"].items():
        assert torch.equal(value, parameters[1]["params"][name]), name
    assert "val/psnr" in json.loads((root / "metrics.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} == {"run", "ranks", *(f"signal{i}" for i in range(len(chain)))}
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]  # not also last-v1.ckpt
    assert checkpoint_step(root) == MAX_STEPS
    assert json.loads((root / "metrics.json").read_text())["step"] == MAX_STEPS
