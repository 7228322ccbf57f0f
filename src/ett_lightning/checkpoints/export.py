"""Tuned checkpoints out: a directory any pipeline can load, and back into an :class:`ETTModule`.

Layout of ``ett export --ckpt run.ckpt --out DIR``::

    DIR/ett_export.json               how to rebuild: architectures, quantizer, stage, file names, and the
                                      model's inputs: image size and preparation, prompt templates and layout
    DIR/tokenizer/model.safetensors   the tuned tokenizer in this package's layout
    DIR/tokenizer/<format>.ckpt|.pt   the same weights in the layout it was loaded from (taming, ibq, llamagen)
    DIR/projector/model.safetensors
    DIR/language_model/               save_pretrained of the LLM and its text tokenizer (image markers included);
                                      a LoRA LLM is saved with its adapters merged into the weights
    DIR/adapter/                      a LoRA LLM's adapters alone (peft's layout), beside the merged LLM
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ett_lightning.data.input_spec import InputSpec
from ett_lightning.models import LanguageModel, MLPProjector
from ett_lightning.models.lora import merged
from ett_lightning.tokenizer import Quantizer, VisionTokenizer, VQTokenizer, from_ett
from ett_lightning.utils import load_strict

log = logging.getLogger(__name__)
EXPORT_FILE = "ett_export.json"
FORMAT_VERSION = 1
ORIGINAL_FILES = {"taming": ("taming.ckpt", "state_dict"), "ibq": ("ibq.ckpt", "state_dict"),
                  "llamagen": ("llamagen.pt", "model")}


def export_module(module: nn.Module, out: str | Path, tokenizer_format: str | None = None,
                  inputs: InputSpec | None = None) -> Path:
    """Writes ``module``'s tokenizer, projector and language model to ``out`` (see the module docstring).

    The extra tokenizer file uses ``tokenizer_format``, else the layout the tokenizer was loaded from
    (``PretrainedVQTokenizer``); later stages built from config and ``init_from`` need the argument. ``inputs``
    records how the model's images and prompts were prepared; without it, those of the data module the module
    is being trained with, else the tokenizer's own resolution and the default templates.
    """
    out = Path(out)
    tokenizer, projector, language_model = module.tokenizer, module.projector, module.language_model
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    (out / "projector").mkdir(exist_ok=True)
    tokenizer_state = contiguous(tokenizer.state_dict())
    save_file(tokenizer_state, out / "tokenizer" / "model.safetensors")
    source_format = tokenizer_format or getattr(tokenizer, "source_format", "ett")
    if source_format in ORIGINAL_FILES and not isinstance(tokenizer, VQTokenizer):
        raise ValueError(f"tokenizer format {source_format!r} is a conv VQGAN layout; a {type(tokenizer).__name__} "
                         "has none: export without --tokenizer-format")
    if source_format in ORIGINAL_FILES:
        name, key = ORIGINAL_FILES[source_format]
        torch.save({key: from_ett(tokenizer_state, source_format)}, out / "tokenizer" / name)
    save_file(contiguous(projector.state_dict()), out / "projector" / "model.safetensors")
    llm = language_model.model
    if language_model.lora is not None:
        llm.save_pretrained(out / "adapter")  # the adapters alone, for peft's PeftModel.from_pretrained
        llm = merged(llm)
    llm.save_pretrained(out / "language_model")
    language_model.tokenizer.save_pretrained(out / "language_model")
    quantizer = tokenizer.quantize
    manifest = {
        "format_version": FORMAT_VERSION,
        "stage": getattr(module, "stage", None),
        "tokenizer": {"class_path": class_path(tokenizer.rebuild_class()), "arch": tokenizer.arch,
                      "source_format": source_format,
                      "quantizer": {"class_path": class_path(type(quantizer)),
                                    "init_args": quantizer.hparams()}},
        "projector": {"in_dim": projector.in_dim, "out_dim": projector.out_dim, "depth": projector.depth,
                      "hidden_dim": projector.hidden_dim},
        "language_model": {"attn_implementation": language_model.model.config._attn_implementation},
        "inputs": (inputs or trained_inputs(module)).to_manifest(),
    }
    (out / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))
    return out


def trained_inputs(module: nn.Module) -> InputSpec:
    """The inputs of the data module training ``module``, else the tokenizer's resolution and default prompts."""
    layout = getattr(module, "sequence_layout", "image_first")
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if datamodule is not None and "image_size" in getattr(datamodule, "hparams", {}):
        return InputSpec.from_data_arguments(dict(datamodule.hparams), layout)
    return InputSpec(native_image_size(module.tokenizer), layout=layout)


def native_image_size(tokenizer: nn.Module) -> int:
    """The image size a tokenizer was built for (``resolution`` or ``image_size`` in its ``arch``), else 256."""
    arch = getattr(tokenizer, "arch", {})
    return int(arch.get("resolution") or arch.get("image_size") or 256)


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared or strided storage; exported tensors are plain copies."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def load_export(directory: str | Path) -> dict[str, Any]:
    """The components of an export (``tokenizer``, ``projector``, ``language_model``), its ``stage`` and its
    ``inputs`` (an :class:`InputSpec`; for exports written before they were recorded, the tokenizer's resolution and
    the default templates, with a warning)."""
    directory = Path(directory)
    manifest_path = directory / EXPORT_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: not a directory written by `ett export`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path} has format_version {manifest.get('format_version')}, "
                         f"this ett_lightning reads {FORMAT_VERSION}")
    spec = manifest["tokenizer"]
    tokenizer_class = import_class(spec.get("class_path", "ett_lightning.tokenizer.VQTokenizer"), VisionTokenizer)
    tokenizer = tokenizer_class(build_class(spec["quantizer"], Quantizer), **spec["arch"])
    load_strict(tokenizer, load_file(directory / "tokenizer" / "model.safetensors"), f"{directory} [tokenizer]")
    tokenizer.source_format = spec["source_format"]
    projector = MLPProjector(**manifest["projector"])
    load_strict(projector, load_file(directory / "projector" / "model.safetensors"), f"{directory} [projector]")
    language_model = LanguageModel(pretrained=str(directory / "language_model"), **manifest["language_model"])
    if "inputs" in manifest:
        inputs = InputSpec.from_manifest(manifest["inputs"])
    else:
        inputs = InputSpec(native_image_size(tokenizer))
        log.warning("%s records no inputs (written by an earlier ett_lightning): assuming %d px images and the default "
                    "prompt templates; pass the image size the model was trained at if it differs", manifest_path,
                    inputs.image_size)
    return {"tokenizer": tokenizer, "projector": projector, "language_model": language_model,
            "stage": manifest["stage"], "inputs": inputs}


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str, base: type) -> type:
    """The class ``path`` names, which must be a subclass of ``base``: an export is untrusted input, and a path
    naming any other callable (``subprocess.run``) would run it with the file's arguments."""
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"export names class {path!r}, which cannot be imported: {err}") from err
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(f"export names {path!r} where a {base.__name__} subclass belongs; refusing to call it")
    return found


def build_class(spec: dict[str, Any], base: type) -> Any:
    return import_class(spec["class_path"], base)(**spec["init_args"])
