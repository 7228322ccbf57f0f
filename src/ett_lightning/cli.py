"""The training command line, `lightning` (also `ett fit|validate|test|predict`): LightningCLI over any module and
datamodule by class_path, checking the configuration before anything is built."""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ett_lightning.callbacks.prediction_writer import PredictionWriter
from ett_lightning.callbacks.run_dir import earlier_run
from ett_lightning.checkpoints.atomic import recover, remove_stale
from ett_lightning.checkpoints.folder import is_checkpoint_folder
from ett_lightning.checkpoints.hyperparameters import entries, rebuild_refusal
from ett_lightning.console import console_entry
from ett_lightning.distributed import fsdp2  # noqa: F401  registers --trainer.strategy=fsdp2
from ett_lightning.packaged_recipes import config_values, resolve_config_arguments
from ett_lightning.resilience import check_config
from ett_lightning.resilience.checkpoint_checks import (
    checkpoint_mismatch,
    folder_needs_fsdp2,
    read_checkpoint,
)
from ett_lightning.resilience.config_checks import seed_problems
from ett_lightning.resilience.resumed_csv_logger import ResumedCSVLogger
from ett_lightning.user_errors import UserError, path_error, shortened

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")


class CheckedLightningCLI(LightningCLI):
    """LightningCLI that checks the resolved configuration (paths, stage, weights, dimensions, image size)
    before instantiating anything, so a typo costs seconds, not an LLM load."""

    resumed_step: int | None = None  # the global step of the checkpoint a fit resumes (read with its other checks)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """A seed NumPy refuses is named before LightningCLI seeds everything with it (a traceback otherwise)."""
        super().parse_arguments(parser, args)
        config = self.config.get(str(self.config.get("subcommand")), self.config)
        problems = list(seed_problems(config.get("seed_everything")))
        if problems:
            raise UserError(problems[0])

    def before_instantiate_classes(self) -> None:
        """Configuration problems end the command like a parser error (the list, then ``error:``, exit status 2,
        no traceback) before anything is built; so does a fresh fit into a run directory that holds a run, when the
        CLI's own loggers make ``default_root_dir`` the run directory (other loggers: :meth:`before_fit`)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            check_config(config.as_dict())
        except ValueError as problems:
            raise UserError(str(problems)) from problems
        if self.subcommand == "fit" and config.get("ckpt_path") is None and config.get("trainer.logger") in (None,
                                                                                                              True):
            root = config.get("trainer.default_root_dir") or os.getcwd()
            refuse_earlier_run(Path(root), config, root)

    def kept_until(self) -> int | None:
        """The step before which ``metrics.csv`` keeps its rows: a fit's resumed checkpoint step (0, none kept, for
        a fresh fit or one whose checkpoint Lightning finds by itself, such as a SLURM requeue's); None, every row,
        for ``validate``, ``test`` and ``predict``."""
        return (self.resumed_step or 0) if self.subcommand == "fit" else None

    def before_fit(self) -> None:
        """A fresh fit (no ``--ckpt_path``) into a directory that holds a run stops here with one line naming it,
        before any logger or callback has written a file there: it would mix its checkpoints with the old ones and
        replace that run's record. Every rank sees the same files (none has written yet) and stops alike. With the
        CLI's own loggers this was already checked before the model was built."""
        config = self.config[self.subcommand]
        if config.get("ckpt_path") is not None:
            return
        refuse_earlier_run(Path(self.trainer.log_dir or self.trainer.default_root_dir), config,
                           self.trainer.default_root_dir)

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
            checkpoint = read_checkpoint(path)
            hyperparameters = dict(checkpoint.get("hyper_parameters") or {})
            if subcommand == "fit" and type(checkpoint.get("global_step")) is int:
                self.resumed_step = checkpoint["global_step"]
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
            raise UserError(problem)
        if config.get("ckpt_path") == "last" and path.name != "last.ckpt":  # a newer SLURM requeue checkpoint
            config["ckpt_path"] = str(path)
        hyperparameters.pop("_instantiator", None)
        if "_class_path" in hyperparameters:
            hyperparameters = {"class_path": hyperparameters.pop("_class_path"), "dict_kwargs": hyperparameters}
        if hyperparameters:
            self.config = self.parser.parse_object({subcommand: {"model": hyperparameters}}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Without a configured logger, TensorBoard and CSV loggers (``metrics.csv``, kept across resumes:
        :class:`ResumedCSVLogger`) writing into ``default_root_dir`` itself.

        Lightning's default logger makes a new ``lightning_logs/version_N`` per invocation, and its checkpoints go
        there too, so a restarted job (``--ckpt_path=last``) would look in a new, empty directory. Here the
        directory *is* the run: logs, ``checkpoints/last.ckpt``, ``metrics.json`` and images all land under
        ``default_root_dir``, one ``--trainer.default_root_dir`` moves all of them (the saved config records no
        logger, so a rerun of it with another directory moves too), and a restart finds its checkpoint. A logger
        set in the config or on the command line is used as given.
        """
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.subcommand == "predict":
            kwargs = with_prediction_writer(kwargs, trainer_config)
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            root = trainer_config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = [TensorBoardLogger(save_dir=root, name="", version=""),
                                ResumedCSVLogger(save_dir=root, name="", version="", resumed_step=self.kept_until())]
        return super().instantiate_trainer(**kwargs)


def refuse_earlier_run(directory: Path, config: Any, default_root_dir: str | Path) -> None:
    """A :class:`UserError` naming what an earlier run left in ``directory``, and how to go on, when it left any."""
    config_files = [Path(os.fspath(path)) for path in config.get("config") or []]
    taken = earlier_run(directory, config_files, default_root_dir)
    if taken:
        resume = ("resume it with --ckpt_path=last, or " if (directory / "checkpoints").is_dir()
                  and any((directory / "checkpoints").glob("*.ckpt")) else "it left no checkpoint to resume; ")
        raise UserError(f"{directory} already holds a run ({taken}): {resume}give this run its own "
                        "--trainer.default_root_dir")


def checkpoint_file(ckpt_path: str | None, root: str | None) -> Path | None:
    """The file ``--ckpt_path`` names: a path, or ``last``: the newer of the run directory's ``checkpoints/last.ckpt``
    (where this CLI's runs keep it) and the newest ``hpc_ckpt_<n>.ckpt`` (what Lightning's SLURM auto-requeue writes,
    and resumes only when no ``--ckpt_path`` is given); None when there is none to check (no ``--ckpt_path``,
    ``best``, or nothing yet)."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path) if Path(ckpt_path).exists() else None  # a folder that is none is named too
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


def main(args: list[str] | None = None) -> None:
    """``lightning fit --config recipes/ett_sft.yaml`` (also validate / test / predict, --print_config); a
    ``--config`` that names no file but a packaged recipe (``ett_sft``, ``demo/ett_sft``) runs that recipe. A
    mistake in the arguments or the configuration ends it with ``<prog>: error: ...`` and exit status 2."""
    argv = resolve_config_arguments(sys.argv[1:] if args is None else args)
    prog = "lightning" if Path(sys.argv[0]).name == "lightning" else "ett"
    prog = f"{prog} {argv[0]}" if argv and argv[0] in TRAINING_COMMANDS else prog
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # names resolved
    not_exiting = {"exit_on_error": False}  # parser errors raised, to be reported below as one line
    try:
        check_config_files(argv)
        CheckedLightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},  # a resume rewrites its run's config; before_fit guards the rest
            parser_kwargs={**not_exiting, **dict.fromkeys(TRAINING_COMMANDS, not_exiting)},
            args=argv,
        )
    except ArgumentError as mistake:  # the parser's details, indented lines below the key, read as one line
        report(prog, " ".join(str(mistake).split()))
        sys.exit(2)
    except UserError as mistake:
        report(prog, str(mistake))
        sys.exit(2)
    except OSError as error:  # a path the user gave: missing, unreadable, of the wrong kind, a name too long
        if error.filename is None:
            raise
        report(prog, path_error(error))
        sys.exit(2)


def check_config_files(argv: list[str]) -> None:
    """A ``--config`` that names no file or recipe, an empty file or one that is not text, named here: the parser
    would say "File does not exist", "Unexpected config" or fail decoding it. Inline YAML passes."""
    for value in config_values(argv):
        if set("{}\n") & set(value) or ": " in value:
            continue
        path = Path(value)
        if not os.path.exists(value):
            raise UserError(f"--config {value}: no such file, and no packaged recipe of that name (`ett recipes` "
                            "lists them)")
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--config {value}: not a YAML text file (give a recipe or a run's config.yaml)") from None
        if not text.strip():
            raise UserError(f"--config {value} is empty (give a recipe or a run's config.yaml)")
        try:
            mapping = isinstance(yaml.safe_load(text), dict)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise UserError(f"--config {value} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
        if not mapping:
            raise UserError(f"--config {value} holds no YAML mapping of options (give a recipe or a run's "
                            "config.yaml)")


def report(prog: str, message: str) -> None:
    """``message`` on stderr ending with ``prog: error: <first line>``; its further lines (a list of problems) come
    first, so the last line is always the error."""
    first, *details = message.strip().splitlines() or ["invalid arguments"]
    for line in details:
        print(shortened(line), file=sys.stderr)
    print(f"{prog}: error: {shortened(first.rstrip(':'))}", file=sys.stderr)


console = console_entry(main)  # the `lightning` console script

if __name__ == "__main__":
    console()
