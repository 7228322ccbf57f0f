"""``--ckpt_path`` that does not fit the recipe, or does not read, stops before anything runs, in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ett_lightning.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, synthetic_shards) -> tuple[Path, list[str]]:
    """One step of the demo ETT recipe (callbacks, validation and checkpoints on), shrunk to 32 px."""
    where = tmp_path_factory.mktemp("sft_run")
    small = [f"--data.train_shards={synthetic_shards}/caption/train-*.tar",
             f"--data.val_shards={synthetic_shards}/caption/val-*.tar", "--trainer.limit_val_batches=1",
             "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
             "--model.init_args.tokenizer.init_args.image_size=32", f"--trainer.default_root_dir={where}/run"]
    main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *small, "--trainer.max_steps=1"])
    return where / "run" / "checkpoints" / "last.ckpt", small


def refused(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(args)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in error
    assert error.startswith(f"ett {args[0]}: error: ") and error.count("\n") == 1, error
    return error


@pytest.mark.slow
def test_a_checkpoint_of_another_module_class_is_refused_naming_both(sft_run, capsys):
    checkpoint, small = sft_run
    error = refused(["validate", "--config", str(ROOT / "recipes/demo/t2i.yaml"), *small,
                     f"--ckpt_path={checkpoint}"], capsys)
    assert f"{checkpoint} is a checkpoint of ett_lightning.ETTModule" in error
    assert "configured model is ett_lightning.tasks.TextToImage" in error


@pytest.mark.slow
def test_resuming_another_stage_is_refused_and_init_from_suggested(sft_run, capsys):
    checkpoint, small = sft_run
    error = refused(["fit", "--config", str(ROOT / "recipes/demo/ett_align.yaml"), *small,
                     f"--ckpt_path={checkpoint}"], capsys)
    assert "written by stage 'ett', but the configuration trains stage 'align'" in error
    assert f"--model.init_args.init_from={checkpoint}" in error


@pytest.mark.slow
def test_a_truncated_checkpoint_is_one_line_naming_it_and_an_older_one(sft_run, tmp_path, capsys):
    checkpoint, small = sft_run
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(checkpoint, run / "step-1.ckpt")
    os.utime(run / "step-1.ckpt", (1, 1))
    (run / "last.ckpt").write_bytes(checkpoint.read_bytes()[:100_000])
    args = ["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *small,
            f"--trainer.default_root_dir={tmp_path / 'run'}"]
    error = refused([*args, "--ckpt_path=last"], capsys)
    assert f"{run / 'last.ckpt'} is not a readable checkpoint (not a whole zip archive" in error
    assert f"older checkpoint: --ckpt_path {run / 'step-1.ckpt'}" in error
    (run / "alone.ckpt").write_bytes(b"not a checkpoint at all")
    os.utime(run / "alone.ckpt", (0, 0))
    error = refused([*args, f"--ckpt_path={run / 'alone.ckpt'}"], capsys)
    assert "alone.ckpt is not a readable checkpoint" in error and "older" not in error


@pytest.mark.slow
def test_the_matching_checkpoint_still_resumes_and_keeps_its_hyperparameters(sft_run, tmp_path):
    checkpoint, small = sft_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "last.ckpt")
    main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *small, f"--trainer.default_root_dir={run}",
          "--trainer.max_steps=2", "--ckpt_path=last", "--model.init_args.warmup_steps=7"])
    newest = max((run / "checkpoints").glob("last*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
    resumed = torch.load(newest, weights_only=True, mmap=True)
    assert resumed["global_step"] == 2
    assert resumed["hyper_parameters"]["warmup_steps"] == 20  # the checkpoint's, as LightningCLI applies them
