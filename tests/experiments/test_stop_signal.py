"""A SIGTERM (a scheduler's, or ``kill <pid of ett demo>``) or SIGINT to an experiment's process reaches the runs it
started, which are not its children in the shell's sense: the demo's stage-2 recipe as shipped (callbacks,
checkpoints on), shrunk, saves its ``last.ckpt`` and stops, no run starts after it, and ``ett demo`` ends with
status 128 + the signal's number and says how to go on. A stop while the demo writes its shards leaves no half set
that the next demo would train on."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from ett_lightning.experiments import demo as demo_module
from ett_lightning.experiments import runs
from ett_lightning.experiments.runs import LightningRun, RunsStopped, run_cli, stop_runs_on_signals

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 100_000  # far more than it trains before the signal


@pytest.fixture
def stop_signals_passed_on(monkeypatch):
    """:func:`stop_runs_on_signals` in this process; afterwards the handlers before it are back."""
    monkeypatch.setattr(runs, "STOPPED_BY", [])
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    with stop_runs_on_signals():
        yield
    assert {number: signal.getsignal(number) for number in before} == before
    for pid in [pid for pid in runs.RUNNING if isinstance(pid, int)]:  # not left training after a failure
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_sigterm_reaches_the_running_run_which_saves_and_stops(tmp_path, synthetic_shards, stop_signals_passed_on):
    run = LightningRun(str(ROOT / "recipes/demo/ett_sft.yaml"), tmp_path / "run", overrides={
        "data.init_args.train_shards": f"{synthetic_shards}/caption/train-*.tar",
        "data.init_args.val_shards": f"{synthetic_shards}/caption/val-*.tar",
        "data.init_args.batch_size": 2, "data.init_args.image_size": 32,
        "model.init_args.tokenizer.init_args.image_size": 32, "trainer.max_steps": MAX_STEPS},
        callback_args={"lightning.pytorch.callbacks.ModelCheckpoint": {"every_n_train_steps": 3}})
    ended: list[BaseException | None] = []

    def train() -> None:
        try:
            run.run()
            ended.append(None)
        except BaseException as error:  # noqa: BLE001 (handed to the test's thread)
            ended.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 120
    while not run.last_checkpoint.is_file() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)  # until it has trained 3 steps and written its first checkpoint
    assert run.last_checkpoint.is_file(), (run.out / "run.log").read_text()[-3000:]
    signal.raise_signal(signal.SIGTERM)  # to this process alone, as `kill` sends it
    thread.join(60)
    assert not thread.is_alive(), "the run went on after the SIGTERM"
    assert isinstance(ended[0], RunsStopped), ended
    assert runs.RUNNING == set()
    log = (run.out / "run.log").read_text()
    assert "SIGTERM on rank 0 of 1: saved" in log, log[-3000:]
    step = torch.load(run.last_checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= step < MAX_STEPS
    with pytest.raises(RunsStopped, match="stopped before"):  # no run starts after the signal
        LightningRun(str(ROOT / "recipes/demo/ett_sft.yaml"), tmp_path / "next").run()
    assert not (tmp_path / "next").exists()


def test_a_stop_signal_reaches_a_run_started_as_a_subprocess(tmp_path, stop_signals_passed_on):
    """Multi-process recipes run as a fresh ``python -m ett_lightning.cli``; here it is still starting. A SIGINT to
    this process alone (``kill -INT``) reaches it as a SIGTERM."""
    codes = []
    thread = threading.Thread(target=lambda: codes.append(run_cli(["fit", "--help"], tmp_path / "log", fork=False)))
    thread.start()
    deadline = time.monotonic() + 30
    while not runs.RUNNING and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.raise_signal(signal.SIGINT)
    thread.join(30)
    assert codes == [-signal.SIGTERM], (codes, (tmp_path / "log").read_text()[-2000:])  # ended by it, not by --help


def test_a_stop_signal_between_runs_stops_at_once_and_a_later_block_starts_afresh(stop_signals_passed_on, tmp_path):
    with pytest.raises(RunsStopped, match="stopped by SIGTERM between runs"):  # e.g. while shards are written
        signal.raise_signal(signal.SIGTERM)
    with stop_runs_on_signals():  # a demo called again in this process: the earlier stop is not held against it
        assert runs.STOPPED_BY == []


def test_a_stop_signal_while_a_run_starts_reaches_that_run(stop_signals_passed_on):
    with runs.running() as started:
        signal.raise_signal(signal.SIGTERM)  # before the run's process exists: not taken for a moment between runs
        process = subprocess.Popen(["sleep", "30"])
        started(process.pid)
        assert process.wait(timeout=10) == -signal.SIGTERM
    assert runs.RUNNING == set()


def test_ett_demo_stopped_by_a_signal_says_how_to_go_on_and_exits_with_its_status(tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "vqa").mkdir(parents=True)
    monkeypatch.setattr(demo_module, "stop_runs_on_signals", contextlib.nullcontext)
    monkeypatch.setattr(runs, "STOPPED_BY", [signal.SIGINT])

    def stopped(plan, reuse):
        raise RunsStopped(f"stopped {plan.out / 'seed0/ett/tune'} (exit 130)")

    monkeypatch.setattr(demo_module, "run_demo", stopped)
    with pytest.raises(SystemExit) as exit_status:
        demo_module.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), "--tune-steps", "9"])
    assert exit_status.value.code == 130
    message = capsys.readouterr().err
    assert message.strip() == (f"ett demo: stopped by SIGINT (a run it stopped saved its last.ckpt first). "
                               f"To go on: ett demo --out {tmp_path / 'out'} --data {tmp_path / 'data'} "
                               f"--tune-steps 9 --reuse")


def test_shards_stopped_while_written_are_not_taken_for_the_demos_data(tmp_path, monkeypatch):
    def stopped_half_way(out, **options):
        (out / "caption").mkdir(parents=True)
        (out / "caption" / "train-000000.tar").write_bytes(b"half")
        raise RunsStopped("stopped by SIGINT between runs")

    monkeypatch.setattr(demo_module, "make_shards", stopped_half_way)
    with pytest.raises(RunsStopped):
        demo_module.write_shards(tmp_path / "data", "centred")
    assert not (tmp_path / "data" / "vqa").exists()  # so the next demo writes them again

    def whole(out, **options):
        for kind in ("caption", "vqa"):
            (out / kind).mkdir(parents=True)
            (out / kind / "train-000000.tar").write_bytes(b"whole")

    monkeypatch.setattr(demo_module, "make_shards", whole)
    demo_module.write_shards(tmp_path / "data", "centred")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tar")) == [
        "data/caption/train-000000.tar", "data/vqa/train-000000.tar"]
    assert (tmp_path / "data" / "caption" / "train-000000.tar").read_bytes() == b"whole"
