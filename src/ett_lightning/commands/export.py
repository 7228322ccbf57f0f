"""``ett export``: a checkpoint of a LightningCLI run -> an export folder that ``ett ask`` and lmms-eval load."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

from ett_lightning.checkpoints.export import ORIGINAL_FILES, export_module
from ett_lightning.checkpoints.folder import is_checkpoint_folder, write_checkpoint_file
from ett_lightning.checkpoints.hyperparameters import rebuild_refusal
from ett_lightning.data.input_spec import InputSpec
from ett_lightning.module import ETTModule
from ett_lightning.resilience.checkpoint_checks import checkpoint_hyperparameters


def main(args: list[str] | None = None) -> None:
    """``ett export --ckpt run.ckpt --out DIR``: a checkpoint of a LightningCLI run -> an export directory."""
    parser = argparse.ArgumentParser(prog="ett export", description=main.__doc__)
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
