"""The console scripts as users type them: print_config on the real recipes, img2dataset shards (the demo chain's
checkpoints, validate, predict and text-to-image are tested on `ett demo`'s outputs, tests/experiments)."""

import csv
import runpy
import sys
from pathlib import Path

import pytest
import torch

from ett_lightning.cli import main
from tests.cli_runs import ROOT


@pytest.mark.parametrize(("recipe", "module", "codebook"), [
    ("ett_align", "ETTModule", "codebook_size: 131072"), ("ett_sft", "ETTModule", "codebook_size: 131072"),
    ("ett_sft_7b", "ETTModule", "codebook_size: 131072"), ("ett_posttrain", "ETTModule", "codebook_size: 131072"),
    ("ett_t2i", "tasks.TextToImage", "codebook_size: 131072"),
    ("ett_align_open_magvit2", "ETTModule", "preset: open-magvit2-262144"),
    ("ett_sft_open_magvit2", "ETTModule", "bits: 18")])
def test_real_recipes_print_their_resolved_config(recipe, module, codebook, capsys, monkeypatch):
    """The CLI's own entry function with the arguments users type (in this process: the console script around it
    is run by the tests below)."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", f"recipes/{recipe}.yaml", "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None)
    assert f"class_path: ett_lightning.{module}" in out and codebook in out


def test_python_dash_m_ett_lightning_is_the_same_command_line(capsys, monkeypatch):
    """``python -m ett_lightning`` (what ``torchrun -m ett_lightning`` runs) parses a recipe like ``lightning``."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["python -m ett_lightning", "fit", "--config", "recipes/ett_sft.yaml",
                                      "--print_config"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("ett_lightning", run_name="__main__", alter_sys=True)
    assert exit_info.value.code in (0, None)
    assert "class_path: ett_lightning.ETTModule" in capsys.readouterr().out


def write_img2dataset_shards(directory: Path, shards: int = 2, per_shard: int = 6) -> str:
    """Shards as img2dataset writes them: ``{shard:05d}{index:04d}`` keys with jpg, txt and json members, JPEGs
    of mixed sizes and modes."""
    import io
    import json
    import tarfile

    from PIL import Image

    directory.mkdir()
    for shard in range(shards):
        with tarfile.open(directory / f"{shard:05d}.tar", "w") as tar:
            for index in range(per_shard):
                key = f"{shard:05d}{index:04d}"
                jpg = io.BytesIO()
                Image.new("RGB" if index % 2 else "L", (40 + 8 * index, 36), (index * 40) % 256).save(jpg, "JPEG")
                caption = f"a flat picture number {index}"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "width": 40 + 8 * index, "height": 36}
                for ext, data in (("jpg", jpg.getvalue()), ("txt", caption.encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory / f"{{00000..{shards - 1:05d}}}.tar")


@pytest.mark.slow
def test_fit_streams_img2dataset_layout_shards(tmp_path, monkeypatch):
    shards = write_img2dataset_shards(tmp_path / "laion")
    monkeypatch.chdir(tmp_path)  # the CLI's own entry function: the console script is run by the tests above
    main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), f"--data.train_shards={shards}",
          "--data.val_shards=null", "--trainer.max_steps=5", "--trainer.limit_val_batches=0",
          "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
          "--model.init_args.tokenizer.init_args.image_size=32"])
    checkpoint = torch.load(tmp_path / "outputs/demo/ett_sft/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 5


@pytest.mark.slow
def test_a_fresh_fit_into_another_runs_directory_stops_and_a_resume_goes_on(tmp_path, synthetic_shards, monkeypatch,
                                                                           capsys):
    """A copied ``config.yaml`` keeps the run directory of the run it came from: fitting it fresh stops before
    training with one line, and leaves that run's record and checkpoints as they were; with ``--ckpt_path=last`` it
    resumes."""
    monkeypatch.chdir(tmp_path)
    small = [f"--data.train_shards={synthetic_shards}/caption/train-*.tar",
             f"--data.val_shards={synthetic_shards}/caption/val-*.tar", "--trainer.limit_val_batches=1",
             "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
             "--model.init_args.tokenizer.init_args.image_size=32"]
    main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), *small, "--trainer.max_steps=1",
          "--trainer.log_every_n_steps=1"])
    run_dir = tmp_path / "outputs/demo/ett_sft"
    first_rows = (run_dir / "metrics.csv").read_text().splitlines()
    record = (run_dir / "config.yaml").read_text()
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    variant = tmp_path / "variant.yaml"
    variant.write_text(record)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(variant), "--trainer.max_steps=2"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and line.startswith("ett fit: error: outputs/demo/ett_sft already holds a run")
    assert "last.ckpt" in line and "--ckpt_path=last" in line
    assert (run_dir / "config.yaml").read_text() == record
    assert sorted((run_dir / "checkpoints").iterdir()) == checkpoints
    main(["fit", "--config", str(variant), "--trainer.max_steps=2", "--ckpt_path=last"])
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    with open(run_dir / "metrics.csv", newline="") as file:  # the resumed run's rows follow the first run's
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows if row["train/total"]] == [0, 1], rows
    first = dict(zip(first_rows[0].split(","), first_rows[1].split(",")))
    assert {key: rows[0][key] for key in first} == first  # as the first run wrote it


def test_a_run_that_left_no_checkpoint_is_named_without_offering_a_resume(tmp_path, synthetic_shards, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/demo/ett_sft").mkdir(parents=True)
    (tmp_path / "outputs/demo/ett_sft/metrics.json").write_text('{"step": 4}')
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "demo/ett_sft", f"--data.train_shards={synthetic_shards}/caption/train-*.tar",
              f"--data.val_shards={synthetic_shards}/caption/val-*.tar"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "already holds a run (metrics.json): it left no checkpoint" in line
    assert "--ckpt_path" not in line
