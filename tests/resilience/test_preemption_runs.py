"""Stop signals as clusters and terminals send them, to the demo stage-2 recipe as shipped (callbacks, validation,
logging, checkpoints on) under 2 gloo processes with a loader worker each: SIGTERM to rank 0 only, to rank 1 only and
to the whole process group (loader workers included), each during training and during validation, at seeded
moments (the last of these sharded by FSDP2); then a single process with 2 workers. Every run must end within 60 s
of the signal, every process gone, with one complete ``last.ckpt`` at the step it reports.

The cases form two chains that run side by side (one run of each at a time: a 2-process run spends most of its time
starting its second rank, which leaves a core free). In each chain every run resumes the previous one's
``last.ckpt`` with ``--ckpt_path=last`` (so every case is also a resume test, across world sizes and strategies
too); one chain ends with the single process, the other with a run that resumes the sharded checkpoint under FSDP2
(``--trainer.strategy=fsdp2``) to ``max_steps``, with the recipe's validation, metrics and final checkpoint. Each
run has a hard timeout, so a hang fails the test with every process's stack. ``ETT_SIGNAL_SEEDS=0,1,2`` draws
other moments.
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

from tests.cli_runs import LIGHTNING, ROOT, run_together, two_processes
from tests.distributed.rank_digest import rank_digest

FSDP2 = [*two_processes(), "--trainer.strategy=fsdp2"]
CHAINS = (  # (case, launch options, world size, target, phase), run side by side step by step
    [("rank0/train", two_processes(), 2, "rank0", "train"),
     ("rank1/validation", two_processes(), 2, "rank1", "validation"),
     ("group/train", two_processes(), 2, "group", "train"),
     ("group/train one process, 2 workers", ["--trainer.devices=1", "--data.init_args.num_workers=2"], 1, "group",
      "train")],
    [("rank1/train", two_processes(), 2, "rank1", "train"),
     ("rank0/validation", two_processes(), 2, "rank0", "validation"),
     ("group/sharded by FSDP2, validation", FSDP2, 2, "group", "validation")],  # a DDP checkpoint resumed sharded
)
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


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("seed", SEEDS)
def test_stop_signals_to_any_process_in_any_phase_save_once_and_resume(tmp_path, synthetic_shards, seed):
    roots = [tmp_path / f"run{chain}" for chain in range(len(CHAINS))]
    steps = [0] * len(CHAINS)
    ranks = tmp_path / "ranks"
    final = [*run_args(synthetic_shards, roots[1], FSDP2), *rank_digest(ranks)]  # after the second chain's cases
    for index in range(max(map(len, CHAINS))):
        commands, cases = [], []
        for chain, cases_of_chain in enumerate(CHAINS):
            if index < len(cases_of_chain):
                case, processes, world_size, target, phase = cases_of_chain[index]
                moment = tmp_path / f"signal{chain}_{index}"
                commands.append([LIGHTNING, *run_args(synthetic_shards, roots[chain], processes),
                                 *signal_at(target, phase, seed * 100 + 10 * chain + index, moment)])
                cases.append((chain, case, world_size, moment))
            elif index == len(cases_of_chain):
                commands.append([LIGHTNING, *final])
        runs = run_together(commands, tmp_path, timeout=150, check=False)
        for (chain, case, world_size, moment), run in zip(cases, runs):
            if index:
                assert "Restored all states from the checkpoint" in run.stdout, f"{case}: did not resume"
            sent = json.loads((moment / "sent.json").read_text())
            saved = assert_stopped_cleanly(case, run, sent, run.ended, roots[chain], world_size)
            assert saved > steps[chain], f"{case}: saved step {saved} after step {steps[chain]}"
            steps[chain] = saved
    assert runs[-1].returncode == 0, runs[-1].stdout[-4000:]

    assert "Restored all states from the checkpoint" in runs[-1].stdout
    parameters = [torch.load(ranks / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert all(p["world_size"] == 2 and p["step"] == MAX_STEPS for p in parameters)
    for name, value in parameters[0]["params"].items():
        assert torch.equal(value, parameters[1]["params"][name]), name
    root = roots[1]
    assert "val/psnr" in json.loads((root / "metrics.json").read_text())
    signals = {f"signal{chain}_{index}" for chain, cases in enumerate(CHAINS) for index in range(len(cases))}
    assert {p.name for p in tmp_path.iterdir()} == {"run0", "run1", "ranks", *signals}
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]  # not also last-v1.ckpt
    assert checkpoint_step(root) == MAX_STEPS
    assert json.loads((root / "metrics.json").read_text())["step"] == MAX_STEPS
