"""Kill tests: real `lightning fit` processes killed with SIGKILL after a checkpoint and in the middle of one, then
resumed from what they left."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ett_lightning import ETTModule
from ett_lightning.cli import main as cli_main
from tests.cli_runs import LIGHTNING

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = textwrap.dedent("""
    trainer:
      plugins:
        - ett_lightning.resilience.AtomicCheckpointIO
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {dirpath: ckpts, save_last: true, save_top_k: 0, every_n_train_steps: 3}
        - ett_lightning.resilience.PreemptionCheckpoint
        - ett_lightning.resilience.RNGState
""")


def fit_args(shards: Path, max_steps: int) -> list[str]:
    return ["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), "--config", "checkpoints.yaml",
            f"--data.train_shards={shards}/caption/train-*.tar", "--data.val_shards=null",
            f"--trainer.max_steps={max_steps}", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
            "--model.init_args.tokenizer.init_args.image_size=32"]


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "checkpoints.yaml").write_text(CHECKPOINTS)
    return tmp_path


@pytest.mark.slow
def test_kill_after_a_checkpoint_then_resume_reaches_the_final_step(run_dir, synthetic_shards, monkeypatch):
    process = subprocess.Popen([LIGHTNING, *fit_args(synthetic_shards, 30)], cwd=run_dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "ckpts" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = step_of(last)
    assert 3 <= killed_at < 30
    monkeypatch.chdir(run_dir)  # resumed in this process: the same CLI, without another start-up
    cli_main([*fit_args(synthetic_shards, 30), "--ckpt_path=last"])
    assert step_of(last) == 30
    assert ETTModule.load_from_checkpoint(last).stage == "ett"


CRASH_ON_SECOND_LAST_WRITE = textwrap.dedent("""
    import io, os, signal, sys, torch
    from ett_lightning.cli import main
    real_save, writes = torch.save, []
    def save(obj, file, *args, **kwargs):
        if "last.ckpt" in str(getattr(file, "name", file)):
            writes.append(1)
            if len(writes) == 2:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, file, *args, **kwargs)
    torch.save = save
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_intact(run_dir, synthetic_shards, monkeypatch,
                                                                              capsys):
    result = subprocess.run([sys.executable, "-c", CRASH_ON_SECOND_LAST_WRITE, *fit_args(synthetic_shards, 30)],
                            cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    partial = list((run_dir / "ckpts").glob(".last.ckpt.tmp-*"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert step_of(run_dir / "ckpts" / "last.ckpt") == 3
    monkeypatch.chdir(run_dir)  # resumed in this process: the same CLI, without another start-up
    cli_main([*fit_args(synthetic_shards, 4), "--ckpt_path=ckpts/last.ckpt"])
    removed = f"removed ckpts/{partial[0].name}, left by a process killed while writing a checkpoint"
    assert removed in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "ckpts").iterdir()) == ["last.ckpt"]  # the killed write's file is gone
    assert step_of(run_dir / "ckpts" / "last.ckpt") == 4
