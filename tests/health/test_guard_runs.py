"""The stage-2 demo recipe as shipped, with its guard, under 2 processes sharded by FSDP2 (Lightning's launcher):
code counts are summed across ranks, the probes are rank 0's on both ranks, and a breach that only rank 1 sees makes
both ranks restore their own shards and optimizer state and lower the rate at the same step, without a hang; the
later checks restart dead codes in the sharded codebook; the ranks end with identical weights. FSDP2 rather than
DDP: its parameters are DTensor shards that the root keeps gathered after a forward, the harder case for the
rollback; the guard's collectives are the strategy's, the same calls under DDP."""

import json

import pytest
import torch

from ett_lightning.health.code_window import code_statistics
from tests.cli_runs import run_lightning, two_processes
from tests.distributed.rank_digest import rank_digest
from tests.distributed.test_ddp_runs import recipe, small


@pytest.mark.slow
@pytest.mark.ddp
def test_a_breach_on_one_rank_trips_the_guard_on_every_rank(tmp_path, synthetic_shards):
    root = tmp_path / "run"
    args = ["fit", *recipe("ett"), *two_processes(), "--trainer.strategy=fsdp2",
            *small(synthetic_shards, "caption", root, 6),
            "--trainer.callbacks+=tests.health.one_rank_breach.RankOneSeesCollapse",
            f"--trainer.callbacks.directory={tmp_path / 'checks'}", "--trainer.callbacks.every_n_steps=2",
            "--trainer.callbacks.num_probe_images=4", "--trainer.callbacks.patience=1",
            "--trainer.callbacks.restart_dead_codes=true",
            *rank_digest(tmp_path / "ranks")]
    run = run_lightning(args, cwd=tmp_path, timeout=180)

    checks = [torch.load(tmp_path / "checks" / f"rank{rank}.pt") for rank in (0, 1)]
    assert [c["step"] for c in checks[0]] == [c["step"] for c in checks[1]] == [2, 4, 6]
    assert [c["trips"] for c in checks[0]] == [c["trips"] for c in checks[1]] == [1, 1, 1]
    assert run.stdout.count("tokenizer guard at step 2:") == 2, run.stdout[-3000:]
    assert "health/probe_psnr_drop = 99 > 3" in run.stdout and "a bound broken on another rank" in run.stdout
    for first, second in zip(*checks):
        assert torch.equal(first["probes"], second["probes"])  # rank 0's probes on both ranks
        summed = code_statistics(first["local_counts"] + second["local_counts"])
        for name, value in summed.items():  # each rank logs the statistics of both ranks' codes
            assert first["values"][f"window_{name}"] == second["values"][f"window_{name}"] == pytest.approx(value)
    ranks = [torch.load(tmp_path / "ranks" / f"rank{rank}.pt") for rank in (0, 1)]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["health/guard_trips"] == 1.0 and 0.0 <= metrics["health/window_usage"] <= 1.0
    assert metrics["health/restarted_codes"] > 0  # the sharded codebook changed alike on both ranks (above)
    assert "health/encoder_drift" in (root / "metrics.csv").read_text().splitlines()[0]
