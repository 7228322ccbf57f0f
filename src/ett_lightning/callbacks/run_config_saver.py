"""Saves the resolved config into the run directory, and refuses a fresh fit into another run's directory."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ett_lightning.callbacks.run_dir import run_dir


class RunConfigSaver(SaveConfigCallback):
    """The CLI's config saver, overwriting only where that is the same run.

    A resumed run (``--ckpt_path``, or Lightning's SLURM requeue from an ``hpc_ckpt_*.ckpt``) and a run started from
    the ``config.yaml`` it will write (as ``ett demo`` does) rewrite that file. A fresh ``fit`` whose run directory
    already holds another run's ``config.yaml``, typically a copied config that kept the old logger ``save_dir``,
    stops before training with an error: it would replace that run's record and mix its checkpoints with the old
    ones (as ``-v1`` names). ``validate``, ``test`` and ``predict`` overwrite as before.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir and stage == "fit":
            config_path = run_dir(trainer) / self.config_filename
            taken = trainer.is_global_zero and self.is_another_run(trainer, config_path)
            if trainer.strategy.broadcast(taken):
                raise RuntimeError(
                    f"{config_path} belongs to an earlier run: a fresh fit would replace it and mix its checkpoints "
                    "with this one's. Resume that run with --ckpt_path=last, or give this run its own directory "
                    "(--trainer.default_root_dir, and the logger's save_dir if the config sets one)."
                )
        super().setup(trainer, pl_module, stage)

    def is_another_run(self, trainer: L.Trainer, config_path: Path) -> bool:
        """Whether ``config_path`` exists and records a run other than this one."""
        if not config_path.is_file() or self.config.get("ckpt_path") is not None:
            return False
        if SLURMEnvironment.detect() and any(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            return False
        inputs = {Path(os.fspath(path)).resolve() for path in self.config.get("config") or []}
        return config_path.resolve() not in inputs
