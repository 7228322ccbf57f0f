"""The demo recipes as shipped (validation, callbacks, logger, checkpoints on) under 2 gloo processes; validation
sets that do not split evenly. Two launchers start the processes as users do: Lightning's (``lightning fit
--trainer.devices=2``: here the NaN run, and every run of the preemption chain in
tests/resilience/test_preemption_runs.py) and torchrun (the uneven-validation runs on one node, the tokenizer's as
two simulated nodes). Resuming under 2 processes is tested with preemption, where every run resumes the one
before; its last run is also this file's check of the stage-2 recipe (identical ranks, its metric, nothing outside
the run directory); the uneven-validation runs are the posttrain recipe's. Align, text-to-image, the adversarial
loss and the 7B recipes run under 2 processes in the chain of paper-scale recipes (test_paper_recipes.py).

Only sizes and step counts are shrunk. Each run has a hard timeout, so a DDP hang fails its test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ett_lightning.cli import main as cli_main
from ett_lightning.convert.synthetic import make_shards
from tests.cli_runs import ROOT, run_lightning, run_torchrun, run_torchrun_nodes, two_processes
from tests.distributed.rank_digest import rank_digest

RECIPES = {"tokenizer": "tokenizer", "ett": "ett_sft", "posttrain": "ett_posttrain"}
VAL_METRICS = {"tokenizer": "val/psnr", "posttrain": "val/vqa_acc"}


def small(shards: Path, task: str, root: Path, steps: int) -> list[str]:
    """The recipe's run at test size: 32 px images, batch 2, ``steps`` steps with a validation every 2."""
    return [f"--data.train_shards={shards}/{task}/train-*.tar", f"--data.val_shards={shards}/{task}/val-*.tar",
            "--data.init_args.batch_size=2", "--data.init_args.image_size=32",
            "--model.init_args.tokenizer.init_args.image_size=32", f"--trainer.max_steps={steps}",
            "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={root}"]


def recipe(name: str) -> list[str]:
    return ["--config", str(ROOT / f"recipes/demo/{RECIPES[name]}.yaml")]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.ddp
def test_tokenizer_recipe_on_two_nodes_through_torchrun(tmp_path, synthetic_shards):
    """``torchrun -m ett_lightning`` as a multi-node job: two simulated nodes of one process each on localhost,
    each started by its own torchrun (as a scheduler starts one per node), meeting at node 0's address."""
    root = tmp_path / "run"
    nodes = run_torchrun_nodes(["fit", *recipe("tokenizer"), "--trainer.accelerator=cpu", "--trainer.devices=1",
                                "--trainer.num_nodes=2", "--trainer.strategy=ddp",
                                *small(synthetic_shards, "caption", root, 4), *rank_digest(tmp_path / "ranks")],
                               cwd=tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks", "run"], "a file landed outside the run directory"
    assert [torch.load(tmp_path / "ranks" / f"rank{r}.pt")["node_rank"] for r in (0, 1)] == [0, 1]
    assert all("GLOBAL_RANK" in output for output in nodes)
    assert_recipe_run("tokenizer", root, tmp_path / "ranks", steps=4)


def assert_recipe_run(stage: str, root: Path, ranks_directory: Path, steps: int) -> None:
    """Both ranks end with identical parameters; the run directory holds the checkpoint, config, events, the
    stage's validation metric (metrics.json and metrics.csv) and one picture file per validation (every 2 steps)."""
    ranks = [torch.load(ranks_directory / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == steps for r in ranks)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    written = files_under(root)
    assert "checkpoints/last.ckpt" in written and "config.yaml" in written
    assert any(name.startswith("events.out.tfevents") for name in written), written
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["step"] == steps and VAL_METRICS[stage] in metrics, metrics
    assert VAL_METRICS[stage] in (root / "metrics.csv").read_text().splitlines()[0]  # the CLI's CSV logger too
    expected = [f"reconstructions/step_{step:07d}.png" for step in range(2, steps + 1, 2)]
    assert [p for p in written if p.startswith("reconstructions")] == expected


SPLIT_METRICS = ("val/psnr", "val/ssim", "val/epoch_codebook_usage", "val/epoch_codebook_perplexity", "val/vqa_acc",
                 "val/vqa_acc_blind")


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("num_val,workers,strategy", [(16, 2, "ddp"), (1, 1, "fsdp2")],
                         ids=["one_shard_2x2_slots", "fewer_samples_than_ranks_fsdp2"])
def test_uneven_validation_finishes_and_matches_one_process(tmp_path, num_val, workers, strategy, monkeypatch):
    """One validation shard read by 2 ranks x 2 workers, and one validation sample for 2 ranks: the 2-process fit
    validates without hanging, and one process validating its checkpoint gets the same metrics. The second case
    runs sharded (FSDP2), where the rank holding only padding must still generate (every forward is a collective)."""
    shards = make_shards(tmp_path / "data", num_train=32, num_val=num_val, image_size=32, samples_per_shard=16, seed=3)
    common = [*recipe("posttrain"), f"--data.init_args.num_workers={workers}"]
    two = tmp_path / "two"
    run_torchrun(["fit", *common, *two_processes(), f"--trainer.strategy={strategy}", *small(shards, "vqa", two, 2),
                  "--trainer.limit_val_batches=1.0", *rank_digest(tmp_path / "ranks")], cwd=tmp_path)
    assert_recipe_run("posttrain", two, tmp_path / "ranks", steps=2)  # the posttrain recipe's 2-process check
    one = tmp_path / "one"
    monkeypatch.chdir(tmp_path)
    cli_main(["validate", *common, *small(shards, "vqa", one, 2), "--trainer.limit_val_batches=1.0",
              f"--ckpt_path={two / 'checkpoints' / 'last.ckpt'}"])  # in this process: no launcher, no imports
    two_metrics = json.loads((two / "metrics.json").read_text())
    one_metrics = json.loads((one / "metrics.json").read_text())
    for name in SPLIT_METRICS:
        assert two_metrics[name] == pytest.approx(one_metrics[name], rel=1e-5, abs=1e-6), name
    answers = [sorted(json.loads((run / "vqa_results.json").read_text()), key=lambda r: r["question_id"])
               for run in (two, one)]
    assert answers[0] == answers[1] and len(answers[0]) == num_val  # every question once, the same answers


@pytest.mark.slow
@pytest.mark.ddp
def test_a_nan_loss_on_one_rank_under_float16_stops_every_rank(tmp_path, synthetic_shards):
    """Under the loss scaler a finite loss with overflowing gradients is the scaler's business, a NaN loss is a
    bad step. Only one rank sees the NaN loss, so the ranks must agree on which it is: when rank 0 counted overflows
    and rank 1 bad steps, rank 1 stopped alone and rank 0 died in its next collective (gloo; NCCL waits instead)."""
    root = tmp_path / "run"
    args = ["fit", *recipe("ett"), *two_processes(), *small(synthetic_shards, "caption", root, 40),
            "--model.class_path=tests.distributed.float16.NaNOnRankOne", "--trainer.precision=null",
            "--trainer.plugins+=tests.distributed.float16.CPUFloat16", "--trainer.log_every_n_steps=3"]
    run = run_lightning(args, cwd=tmp_path, timeout=150, check=False)
    assert run.returncode != 0
    for rank in (0, 1):
        assert re.search(rf"\[rank{rank}\]: RuntimeError: 1\d consecutive steps with non-finite grad", run.stdout), rank
