"""The ``lightning`` and ``ett`` console scripts: LightningCLI over any module / datamodule by class_path."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ett_lightning.callbacks.prediction_writer import PredictionWriter
from ett_lightning.callbacks.run_config_saver import RunConfigSaver
from ett_lightning.checkpoints.atomic import recover, remove_stale
from ett_lightning.checkpoints.export import ORIGINAL_FILES, export_module
from ett_lightning.checkpoints.folder import is_checkpoint_folder, write_checkpoint_file
from ett_lightning.checkpoints.hyperparameters import entries, rebuild_refusal
from ett_lightning.data.input_spec import InputSpec
from ett_lightning.distributed import fsdp2  # noqa: F401  registers --trainer.strategy=fsdp2
from ett_lightning.module import ETTModule
from ett_lightning.resilience import check_config
from ett_lightning.resilience.checkpoint_checks import (
    checkpoint_hyperparameters,
    checkpoint_mismatch,
    folder_needs_fsdp2,
)


class CheckedLightningCLI(LightningCLI):
    """LightningCLI that checks the resolved configuration (paths, stage, weights, dimensions, image size)
    before instantiating anything, so a typo costs seconds, not an LLM load."""

    def before_instantiate_classes(self) -> None:
        """Configuration problems end the command like a parser error: the list on stderr, exit status 2, no
        traceback."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            check_config(config.as_dict())
        except ValueError as problems:
            print(f"error: {problems}", file=sys.stderr)
            sys.exit(2)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: a file that is no readable checkpoint, or a checkpoint of another module class (or, for
        ``fit``, another stage), ends the command like a parser error before anything is built. Otherwise the
        checkpoint's hyperparameters update the configuration as in LightningCLI, but read memory-mapped: Lightning
        loads the whole checkpoint here (all weights and optimizer state, on every rank) only to read them."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config and config.get("ckpt_path"):
            recover_interrupted_saves(config.get("ckpt_path"), config.get("trainer.default_root_dir"))
        path = config and checkpoint_file(config.get("ckpt_path"), config.get("trainer.default_root_dir"))
        if not path:
            return
        try:
            hyperparameters = checkpoint_hyperparameters(path)
            model = config.get("model")
            model = model.as_dict() if model else {}
            strategy = config.get("trainer.strategy")
            trusted = any(key == "trust_remote_code" and value is True for _, key, value in entries(model))
            problem = (rebuild_refusal(hyperparameters, str(path), trusted)
                       or checkpoint_mismatch(path, hyperparameters, model, subcommand)
                       or folder_needs_fsdp2(path, strategy.as_dict() if hasattr(strategy, "as_dict") else strategy))
        except ValueError as unreadable:
            problem = str(unreadable)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        if config.get("ckpt_path") == "last" and path.name != "last.ckpt":  # a newer SLURM requeue checkpoint
            config["ckpt_path"] = str(path)
        hyperparameters.pop("_instantiator", None)
        if "_class_path" in hyperparameters:
            hyperparameters = {"class_path": hyperparameters.pop("_class_path"), "dict_kwargs": hyperparameters}
        if hyperparameters:
            self.config = self.parser.parse_object({subcommand: {"model": hyperparameters}}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Without a configured logger, a TensorBoard logger writing into ``default_root_dir`` itself.

        Lightning's default logger makes a new ``lightning_logs/version_N`` per invocation, and its checkpoints go
        there too, so a restarted job (``--ckpt_path=last``) would look in a new, empty directory. Here the
        directory *is* the run: logs, ``checkpoints/last.ckpt``, ``metrics.json`` and images all land under
        ``default_root_dir``, one ``--trainer.default_root_dir`` moves all of them, and a restart finds its
        checkpoint. A logger set in the config or on the command line is used as given.
        """
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.subcommand == "predict":
            kwargs = with_prediction_writer(kwargs, trainer_config)
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            root = trainer_config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = TensorBoardLogger(save_dir=root, name="", version="")
        return super().instantiate_trainer(**kwargs)


def checkpoint_file(ckpt_path: str | None, root: str | None) -> Path | None:
    """The file ``--ckpt_path`` names: a path, or ``last``: the newer of the run directory's ``checkpoints/last.ckpt``
    (where this CLI's runs keep it) and the newest ``hpc_ckpt_<n>.ckpt`` (what Lightning's SLURM auto-requeue writes,
    and resumes only when no ``--ckpt_path`` is given); None when there is none to check (no ``--ckpt_path``,
    ``best``, or nothing yet)."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path) if Path(ckpt_path).is_file() or is_checkpoint_folder(ckpt_path) else None
    run = Path(root or os.getcwd())
    candidates = [run / "checkpoints" / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file() or is_checkpoint_folder(path)]
    return max(existing, key=lambda path: path.stat().st_mtime) if existing else None


def recover_interrupted_saves(ckpt_path: str, root: str | None) -> None:
    """Before a resume, in the first process only: the previous checkpoint folder back under its name when a kill
    came between the two renames of its replacement, and the temporaries of killed writers removed
    (:mod:`ett_lightning.checkpoints.atomic`)."""
    if int(os.environ.get("RANK", 0)) != 0 or ckpt_path == "best":
        return
    target = Path(root or os.getcwd()) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if recover(target):
        print(f"{target}: put back the previous checkpoint, whose replacement was interrupted", file=sys.stderr)
    for stale in remove_stale(target.parent):
        print(f"removed {stale}, left by a process killed while writing a checkpoint", file=sys.stderr)


def with_prediction_writer(kwargs: dict[str, Any], trainer_config: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` whose callbacks (the configured ones, which ``kwargs`` replace) include a
    :class:`PredictionWriter` unless one is configured: a ``predict`` run writes ``<run dir>/predictions.jsonl``
    instead of discarding what it predicts."""
    configured = kwargs.get("callbacks", trainer_config.get("callbacks")) or []
    configured = list(configured) if isinstance(configured, list | tuple) else [configured]
    if any(isinstance(callback, BasePredictionWriter) for callback in configured):
        return kwargs
    return {**kwargs, "callbacks": [*configured, PredictionWriter()]}


def export_command(args: list[str] | None = None) -> None:
    """``ett export --ckpt run.ckpt --out DIR``: a checkpoint of a LightningCLI run -> an export directory."""
    parser = argparse.ArgumentParser(prog="ett export", description=export_command.__doc__)
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `lightning fit` (a file, or "
                                                      "the folder FSDP2's save_distributed_checkpoint writes)")
    parser.add_argument("--out", required=True, help="export directory to write")
    parser.add_argument("--tokenizer-format", choices=sorted(ORIGINAL_FILES),
                        help="also write the tokenizer in this public layout (default: the layout it was loaded from)")
    parser.add_argument("--config", help="the run's config.yaml, whose data section says how images and prompts "
                                         "were prepared (default: config.yaml of the checkpoint's run directory)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the checkpoint's LLM run the code it ships, when its run set trust_remote_code")
    options = parser.parse_args(args)
    if not Path(options.ckpt).exists():
        parser.error(f"checkpoint not found: {options.ckpt}")
    try:  # the one-line reading check of --ckpt_path: a folder's files are data, a file is a Lightning checkpoint
        hyperparameters = checkpoint_hyperparameters(Path(options.ckpt))
    except ValueError as unreadable:
        parser.error(str(unreadable))
    refused = rebuild_refusal(hyperparameters, options.ckpt, options.trust_remote_code)
    if refused:
        parser.error(refused)
    if is_checkpoint_folder(options.ckpt):  # Lightning loads files: a file of the folder's weights, then removed
        with tempfile.TemporaryDirectory(dir=Path(options.out).resolve().parent) as scratch:
            module = ETTModule.load_from_checkpoint(write_checkpoint_file(options.ckpt, Path(scratch) / "last.ckpt"),
                                                    map_location="cpu")
    else:
        module = ETTModule.load_from_checkpoint(options.ckpt, map_location="cpu")
    inputs = run_inputs(Path(options.config) if options.config else Path(options.ckpt).parent.parent / "config.yaml",
                        module.sequence_layout)
    print(f"exported {options.ckpt} to {export_module(module, options.out, options.tokenizer_format, inputs)}")


def run_inputs(config_path: Path, layout: str) -> InputSpec | None:
    """The inputs the run's data module prepared (its ``data`` section), or None without a config file."""
    if not config_path.is_file():
        print(f"{config_path} not found: the export records the tokenizer's resolution and the default prompt "
              "templates as the model's inputs; pass --config run/config.yaml to record the run's own",
              file=sys.stderr)
        return None
    data = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
    return InputSpec.from_data_arguments(data, layout)


def ask_command(args: list[str]) -> None:
    """``ett ask``: imported only when asked, so training processes never load it."""
    from ett_lightning.evaluation.ask import main as ask_main

    ask_main(args)


def lmms_task_command(args: list[str]) -> None:
    """``ett lmms-task``: VQA shards as a local lmms-eval task (needs the ``eval`` extra's ``datasets``)."""
    from ett_lightning.evaluation.lmms_task import main as lmms_task_main

    lmms_task_main(args)


def demo_command(args: list[str]) -> None:
    """``ett demo``: the experiments (and their plotting) are imported only when asked, never by a training run."""
    from ett_lightning.experiments.demo import main as demo_main

    demo_main(args)


def main(args: list[str] | None = None) -> None:
    """``lightning fit --config recipes/ett_sft.yaml`` (also validate / test / predict, --print_config), and
    ``ett export --ckpt run.ckpt --out DIR``, ``ett ask --export DIR ...``, ``ett lmms-task`` and ``ett demo``."""
    argv = sys.argv[1:] if args is None else args
    commands = {"export": export_command, "demo": demo_command, "ask": ask_command, "lmms-task": lmms_task_command}
    if argv[:1] and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    CheckedLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
