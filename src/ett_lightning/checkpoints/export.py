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

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ett_lightning.checkpoints.manifest import EXPORT_FILE, FORMAT_VERSION, read_manifest
from ett_lightning.checkpoints.registry import ExportError, class_path
from ett_lightning.data.input_spec import InputSpec
from ett_lightning.models import LanguageModel
from ett_lightning.models.lora import merged
from ett_lightning.tokenizer import from_ett
from ett_lightning.tokenizer.pretrained import format_family
from ett_lightning.user_errors import UserError
from ett_lightning.utils import load_strict

log = logging.getLogger(__name__)
ORIGINAL_FILES = {"taming": ("taming.ckpt", "state_dict"), "ibq": ("ibq.ckpt", "state_dict"),
                  "llamagen": ("llamagen.pt", "model"), "open-magvit2": ("open_magvit2.ckpt", "state_dict")}


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
    source_format = tokenizer_format or getattr(tokenizer, "source_format", "ett")
    check_public_layout(tokenizer, source_format)
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    (out / "projector").mkdir(exist_ok=True)
    tokenizer_state = contiguous(tokenizer.state_dict())
    save_file(tokenizer_state, out / "tokenizer" / "model.safetensors")
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
        "language_model": {"attn_implementation": attention_name(language_model)},
        "inputs": (inputs or trained_inputs(module)).to_manifest(),
    }
    (out / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))
    return out


def check_public_layout(tokenizer: nn.Module, fmt: str) -> None:
    """Refuses, before anything is written, a public layout that cannot hold ``tokenizer``: another family's
    modules, or another quantizer than the one the layout's own code rebuilds (Open-MAGVIT2 files are read back
    with LFQ, the VQGAN-family files with their stored codebook)."""
    if fmt not in ORIGINAL_FILES:
        return
    family, fits = format_family(fmt)
    quantizer = tokenizer.quantize
    if not issubclass(tokenizer.rebuild_class(), family) or not isinstance(quantizer, fits):
        raise UserError(f"tokenizer format {fmt!r} holds a {family.__name__} with a {fits.__name__}; this model's "
                        f"tokenizer is a {type(tokenizer).__name__} with a {type(quantizer).__name__}: export without "
                        "--tokenizer-format (the export's own tokenizer/model.safetensors holds it)")


def attention_name(language_model: LanguageModel) -> str:
    """The ``attn_implementation`` argument that rebuilds the LLM's attention (``sdpa`` for segment attention)."""
    return "sdpa" if language_model.segment_attention else language_model.causal_lm.config._attn_implementation


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


def load_export(directory: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """The components of an export (``tokenizer``, ``projector``, ``language_model``), its ``stage`` and its
    ``inputs`` (an :class:`InputSpec`; for exports written before they were recorded, the tokenizer's resolution and
    the default templates, with a warning).

    The export is untrusted: the manifest is checked entry by entry (:mod:`.manifest`), its classes come from
    :mod:`.registry`, every file read lies inside ``directory``, and tensor shapes are compared with the weights
    files before anything is allocated. Code shipped with the LLM (``auto_map``) runs only with
    ``trust_remote_code=True``, the caller's choice, never the file's. A refused export raises
    :class:`~ett_lightning.checkpoints.registry.ExportError` (a ``ValueError``) with one line saying why.
    """
    manifest = read_manifest(directory)
    directory = manifest.directory
    try:
        with torch.device("meta"):  # shapes first: a manifest asking for a huge model costs nothing before the check
            check_shapes(manifest.build_tokenizer(), directory / "tokenizer" / "model.safetensors")
            check_shapes(manifest.build_projector(), directory / "projector" / "model.safetensors")
    except ExportError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as err:  # arguments that build no model
        raise ExportError(f"{manifest.path}: its tokenizer or projector arguments build no model "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    tokenizer = manifest.build_tokenizer()
    load_strict(tokenizer, load_file(directory / "tokenizer" / "model.safetensors"), f"{directory} [tokenizer]")
    tokenizer.source_format = manifest.source_format
    projector = manifest.build_projector()
    load_strict(projector, load_file(directory / "projector" / "model.safetensors"), f"{directory} [projector]")
    language_model = load_language_model(directory / "language_model", manifest.attn_implementation,
                                         trust_remote_code)
    inputs = manifest.inputs
    if inputs is None:
        inputs = InputSpec(native_image_size(tokenizer))
        log.warning("%s records no inputs (written by an earlier ett_lightning): assuming %d px images and the default "
                    "prompt templates; pass the image size the model was trained at if it differs", manifest.path,
                    inputs.image_size)
    return {"tokenizer": tokenizer, "projector": projector, "language_model": language_model,
            "stage": manifest.stage, "inputs": inputs}


def check_shapes(module: nn.Module, weights: Path) -> None:
    """The tensors of ``weights`` (read from its header) have the names and shapes of ``module``'s state."""
    try:
        with safe_open(str(weights), "pt") as file:
            stored = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as err:  # safetensors reports a torn or foreign file in several types
        raise ExportError(f"{weights} is not a readable safetensors file ({type(err).__name__})") from None
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    if stored != expected:
        different = sorted(set(stored) ^ set(expected)) or sorted(k for k in stored if stored[k] != expected[k])
        raise ExportError(f"{weights} does not hold the weights of the {type(module).__name__} the manifest "
                          f"describes ({len(different)} entries differ, first: {different[0][:100]})")


def load_language_model(directory: Path, attn_implementation: str, trust_remote_code: bool) -> LanguageModel:
    """The export's LLM; one whose files ask to run code they ship (``auto_map``) is refused unless trusted, and one
    whose files do not make an LLM with its text tokenizer is refused with the reason."""
    if not (directory / "tokenizer_config.json").is_file():
        raise ExportError(f"{directory} holds no tokenizer_config.json: the export's text tokenizer is missing "
                          "(Hugging Face would fall back to another tokenizer and the answers would be noise)")
    try:
        return LanguageModel(pretrained=str(directory), attn_implementation=attn_implementation,
                             trust_remote_code=trust_remote_code)
    except Exception as err:  # untrusted files fail inside transformers in many types; each is a refused export
        if "trust_remote_code" in str(err):
            raise ExportError(f"{directory} needs code shipped with the export to build its LLM (an auto_map in its "
                              "config): refused. Load it with trust_remote_code=True (ett ask --trust-remote-code) "
                              "only if you trust its author") from None
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ExportError(f"{directory} does not load as the export's LLM ({type(err).__name__}: {reason})") from None
