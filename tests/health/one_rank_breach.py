"""The tokenizer guard under 2 processes, for the multi-process runs of the stage-2 recipe
(tests/distributed/test_fsdp2_runs.py runs it under DDP and FSDP2): rank 1 alone sees a collapsed PSNR at the
second check (step 4), every rank writes what it counted and measured at each check, and
:func:`assert_the_ranks_agreed` checks that the window's counts were summed across ranks, the probes were rank 0's
on both, both ranks tripped at the same step (restoring step 2's weights and AdamW state, lowering the rate, then
training on) and the healthy checks restarted dead codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ett_lightning.health import TokenizerGuard
from ett_lightning.health.code_window import code_statistics


class RankOneSeesCollapse(TokenizerGuard):
    def __init__(self, directory: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.directory = Path(directory)
        self.records: list[dict] = []

    def measure(self, trainer, pl_module) -> dict[str, float]:
        local = torch.stack([*self.window.closed, self.window.current]).sum(0)  # before the ranks' sum
        values = super().measure(trainer, pl_module)
        if trainer.global_rank == 1 and len(self.records) == 1:
            values["probe_psnr_drop"] = 99.0
        self.records.append({"step": trainer.global_step, "local_counts": local.cpu(), "values": dict(values),
                             "probes": self.probes.images.clone()})
        return values

    def after_check(self, trainer, pl_module) -> None:
        super().after_check(trainer, pl_module)
        self.records[-1]["trips"] = self.trips
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.records, self.directory / f"rank{trainer.global_rank}.pt")


def guard_args(directory: Path) -> list[str]:
    """Command-line arguments adding the guard above, checking every 2 steps, tripping at the first breach."""
    return ["--trainer.callbacks+=tests.health.one_rank_breach.RankOneSeesCollapse",
            f"--trainer.callbacks.directory={directory}", "--trainer.callbacks.every_n_steps=2",
            "--trainer.callbacks.num_probe_images=4", "--trainer.callbacks.patience=1",
            "--trainer.callbacks.restart_dead_codes=true"]


def assert_the_ranks_agreed(directory: Path, output: str, root: Path, steps: int) -> None:
    checks = [torch.load(directory / f"rank{rank}.pt") for rank in (0, 1)]
    assert [c["step"] for c in checks[0]] == [c["step"] for c in checks[1]] == list(range(2, steps + 1, 2))
    assert [c["trips"] for c in checks[0]] == [c["trips"] for c in checks[1]] == [0] + [1] * (steps // 2 - 1)
    assert output.count("tokenizer guard at step 4:") == 2, output[-3000:]
    assert output.count("restored the state of step 2; lower_lr") == 2
    assert "health/probe_psnr_drop = 99 > 3" in output and "a bound broken on another rank" in output
    for first, second in zip(*checks):
        assert torch.equal(first["probes"], second["probes"])  # rank 0's probes on both ranks
        summed = code_statistics(first["local_counts"] + second["local_counts"])
        for name, value in summed.items():  # each rank logs the statistics of both ranks' codes
            assert first["values"][f"window_{name}"] == second["values"][f"window_{name}"] == pytest.approx(value)
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["health/guard_trips"] == 1.0 and metrics["health/restarted_codes"] > 0
    assert "health/encoder_drift" in (root / "metrics.csv").read_text().splitlines()[0]
