"""``--ckpt_path`` checks before anything is built: the file reads as a checkpoint, and it belongs to the recipe."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from ett_lightning.checkpoints.folder import check_folder, folder_metadata, is_checkpoint_folder
from ett_lightning.checkpoints.hyperparameters import loaded_class


def checkpoint_hyperparameters(path: Path) -> dict[str, Any]:
    """The ``hyper_parameters`` a Lightning checkpoint records (see :func:`read_checkpoint`)."""
    return dict(read_checkpoint(path).get("hyper_parameters") or {})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint read memory-mapped (no tensor is loaded, so a 7B model's checkpoint costs no memory
    here; of a checkpoint folder, its ``meta.pt``, once :func:`check_folder` has found nothing but data in it).
    Raises one-line ValueError for a file that is no readable checkpoint, naming an older checkpoint of the same
    folder to resume from instead."""
    if is_checkpoint_folder(path):
        check_folder(path)
        return folder_metadata(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder but no checkpoint folder (no .metadata): give a checkpoint file, e.g. "
                         "<run>/checkpoints/last.ckpt, or the folder FSDP2 saved")
    if not zipfile.is_zipfile(path):  # what torch.save writes; a text file, an empty file, a foreign format
        raise ValueError(f"{path} is not a readable checkpoint (not a whole zip archive, which torch.save writes: "
                         "cut short, or another kind of file; give <run>/checkpoints/last.ckpt of a `lightning fit` "
                         "run)" + older_checkpoint_hint(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch reports truncation, foreign files and bad pickles in many types
        reason = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason})"
                         + older_checkpoint_hint(path)) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (it has no state_dict)" + older_checkpoint_hint(path))
    return checkpoint


def older_checkpoint_hint(path: Path) -> str:
    """``; the same folder holds an older checkpoint ...`` when it does, else nothing."""
    mtime = path.stat().st_mtime
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path and p.stat().st_mtime <= mtime),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    return f"; the same folder holds an older checkpoint: --ckpt_path {others[0]}" if others else ""


def checkpoint_mismatch(path: Path, hyperparameters: dict[str, Any], model: dict[str, Any], subcommand: str
                        ) -> str | None:
    """Why the checkpoint at ``path`` does not belong to the configured ``model`` (``{class_path, init_args}``), or
    None. Lightning would otherwise rebuild the model from the checkpoint's own class and arguments and silently
    run another task, or (``fit``) resume one stage with another stage's frozen parts and optimizer state."""
    stored, configured = hyperparameters.get("_class_path"), model.get("class_path")
    if stored and configured and loaded_class(stored) is not loaded_class(configured):
        return (f"{path} is a checkpoint of {stored}, but the configured model is {configured}: give a checkpoint "
                f"of a {configured.rpartition('.')[2]} run, or the config of the run that wrote it")
    stored_stage, stage = hyperparameters.get("stage"), (model.get("init_args") or {}).get("stage")
    if subcommand == "fit" and stored_stage and stage and stored_stage != stage:
        return (f"{path} was written by stage {stored_stage!r}, but the configuration trains stage {stage!r}; "
                f"--ckpt_path resumes the same stage. To start stage {stage!r} from its weights, use "
                f"--model.init_args.init_from={path} instead")
    return None


def folder_needs_fsdp2(path: Path, strategy: Any) -> str | None:
    """Why a checkpoint folder cannot resume under the configured ``strategy`` (a name, or ``{class_path, ...}``), or
    None: only FSDP2Strategy reads one back, other strategies stop at "Is a directory"."""
    name = strategy if isinstance(strategy, str) else (strategy or {}).get("class_path", "")
    if not is_checkpoint_folder(path) or name == "fsdp2" or str(name).endswith("FSDP2Strategy"):
        return None
    return (f"{path} is a checkpoint folder (FSDP2's save_distributed_checkpoint), which only FSDP2Strategy resumes: "
            "add --trainer.strategy=fsdp2, or start from its weights with --model.init_args.init_from, or export it "
            "with `ett export`")
