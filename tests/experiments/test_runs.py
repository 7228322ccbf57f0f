"""LightningRun writes the recipe with its own output paths and overrides, and reads back what the run logged."""

import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from ett_lightning import cli
from ett_lightning.experiments import runs
from ett_lightning.experiments.runs import LightningRun, run_cli, set_dotted

RECIPE = Path("recipes/demo/tokenizer.yaml")


def test_config_points_every_output_at_the_run_directory(tmp_path):
    run = LightningRun(str(RECIPE), tmp_path / "run", "validate",
                       overrides={"trainer.max_steps": 7, "model.init_args.init_from": "a.ckpt"},
                       callback_args={"ett_lightning.callbacks.ReconstructionMetrics": {"fid": True}})
    config = run.config()
    recipe = yaml.safe_load(RECIPE.read_text())
    assert config["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert "logger" not in config["trainer"]  # the CLI's loggers follow default_root_dir; nothing pins them apart
    assert config["trainer"]["max_steps"] == 7 and config["model"]["init_args"]["init_from"] == "a.ckpt"
    callbacks = {c["class_path"]: c.get("init_args", {}) for c in config["trainer"]["callbacks"] if isinstance(c, dict)}
    assert "dirpath" not in callbacks["lightning.pytorch.callbacks.ModelCheckpoint"]  # under the logger's directory
    assert callbacks["ett_lightning.callbacks.ReconstructionMetrics"] == {"fid": True}
    assert config["model"]["init_args"]["tokenizer"] == recipe["model"]["init_args"]["tokenizer"]
    assert not run.done


def test_set_dotted_creates_missing_levels():
    config = {"a": {"x": 1}}
    set_dotted(config, "a.b.c", 2)
    assert config == {"a": {"x": 1, "b": {"c": 2}}}


def test_curve_and_metrics_read_the_files_lightning_writes(tmp_path):
    run = LightningRun(str(RECIPE), tmp_path)
    assert run.curve("train/caption") == ([], [])
    (tmp_path / "metrics.csv").write_text("epoch,step,train/caption,val/psnr\n0,9,2.5,\n0,19,2.0,\n0,19,,17.0\n")
    assert run.curve("train/caption") == ([9, 19], [2.5, 2.0])
    (tmp_path / "metrics.json").write_text('{"val/psnr": 17.0}')
    assert run.metrics() == {"val/psnr": 17.0}


def test_a_failing_run_raises_with_the_end_of_its_log(tmp_path):
    run = LightningRun(str(RECIPE), tmp_path / "bad", overrides={"model.init_args.learning_rate": -1.0,
                                                                  "model.init_args.no_such_argument": 1})
    with pytest.raises(RuntimeError, match="failed \\(exit"):
        run.run()
    assert (tmp_path / "bad" / "run.log").read_text()


@pytest.mark.parametrize("fork", [True, False])
def test_the_cli_runs_forked_or_as_a_subprocess_with_its_output_and_exit_code(tmp_path, fork):
    cases = [(["fit", "--config", str(tmp_path / "missing.yaml")], False)]
    for argv, succeeds in cases + ([(["fit", "--help"], True)] if fork else []):
        code = run_cli(argv, tmp_path / "run.log", fork=fork)
        text = (tmp_path / "run.log").read_text()
        assert (code == 0) == succeeds
        assert ("--trainer" in text) if succeeds else ("missing.yaml" in text)


@pytest.mark.parametrize(("devices", "forks"), [(1, None), (2, False), ("auto", False)])
def test_multi_device_runs_are_never_forked(tmp_path, monkeypatch, devices, forks):
    """Lightning re-runs the command line to start other ranks; a forked child has none to re-run."""
    calls = []
    monkeypatch.setattr(runs, "run_cli", lambda argv, log, fork=None, threads=None: calls.append(fork) or 0)
    LightningRun(str(RECIPE), tmp_path / "run", overrides={"trainer.devices": devices}).run()
    assert calls == [forks]


@pytest.mark.parametrize("threads", [1, 3])
def test_a_forked_run_uses_the_torch_threads_it_is_given(tmp_path, monkeypatch, threads):
    """Two demo arms share the cores: each run's torch threads are capped, or OpenMP spins away the machine."""
    seen = tmp_path / "threads.txt"
    monkeypatch.setattr(cli, "main", lambda argv: seen.write_text(str(torch.get_num_threads())))
    child = multiprocessing.get_context("fork").Process(
        target=runs.cli_in_child, args=(["fit"], str(tmp_path / "run.log"), str(tmp_path), threads))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and seen.read_text() == str(threads)


def test_reuse_skips_finished_runs_and_resumes_a_fit_stopped_early(tmp_path, monkeypatch):
    """A killed demo goes on with --reuse: a fit whose last.ckpt is short of max_steps resumes from it."""
    started = []
    monkeypatch.setattr(runs, "run_cli", lambda argv, log, fork=None, threads=None: started.append(argv) or 0)
    run = LightningRun(str(RECIPE), tmp_path / "run", overrides={"trainer.max_steps": 7})
    run.last_checkpoint.parent.mkdir(parents=True)
    for step, resumed in ((3, True), (7, False)):
        torch.save({"global_step": step, "state_dict": {}}, run.last_checkpoint)
        assert run.done is not resumed
        run.run(reuse=True)
    assert started == [["fit", "--config", str(run.out / "config.yaml"), "--ckpt_path", "last"]]
    run.run(reuse=False)  # without reuse: a fresh fit (which the CLI refuses over a run's files)
    assert started[-1] == ["fit", "--config", str(run.out / "config.yaml")]
    validation = LightningRun(str(RECIPE), tmp_path / "eval", "validate")
    assert not validation.done
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    assert validation.done


def test_reuse_starts_over_an_attempt_that_left_no_checkpoint_and_a_corrupt_one_is_not_finished(tmp_path,
                                                                                                  monkeypatch):
    started = []
    monkeypatch.setattr(runs, "run_cli", lambda argv, log, fork=None, threads=None: started.append(argv) or 0)
    run = LightningRun(str(RECIPE), tmp_path / "run", overrides={"trainer.max_steps": 7})
    run.out.mkdir()
    (run.out / "metrics.json").write_text('{"step": 4}')  # killed after a validation, before any checkpoint
    run.run(reuse=True)
    assert started == [["fit", "--config", str(run.out / "config.yaml")]]
    assert sorted(p.name for p in run.out.iterdir()) == ["config.yaml"]  # the stale record went with it
    run.last_checkpoint.parent.mkdir()
    run.last_checkpoint.write_bytes(b"cut short")
    assert not run.done
