"""``ett_export.json`` read as data: every entry checked before anything is built from it.

What a manifest may hold (anything else is refused with one line naming the entry):

- ``format_version`` (1), ``stage`` (``align``, ``ett``, ``posttrain`` or null);
- ``tokenizer``: ``class_path`` and ``arch`` of a tokenizer in :data:`~.registry.TOKENIZERS`, its
  ``source_format`` (a layout name), and ``quantizer``: ``class_path`` and ``init_args`` of a quantizer in
  :data:`~.registry.QUANTIZERS`; only the arguments the registry lists, with values of the listed kinds;
- ``projector``: ``in_dim``, ``out_dim``, ``depth``, ``hidden_dim``;
- ``language_model``: ``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``; earlier exports'
  ``ett_segment_sdpa`` reads as ``sdpa``); never
  ``trust_remote_code``, which only the caller sets;
- ``inputs``: the image size and preparation, the prompt layout, ``max_text_tokens`` and templates whose only
  placeholders are ``{question}`` and ``{caption}``.

The export's files must lie inside its directory: a link leading out of it is refused.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ett_lightning.checkpoints.registry import (
    QUANTIZERS,
    TOKENIZERS,
    Buildable,
    ExportError,
    count,
    depth,
    one_of,
    optional,
    side,
)
from ett_lightning.data.input_spec import IMAGE_PREPARATION, InputSpec
from ett_lightning.models import LanguageModel, MLPProjector
from ett_lightning.models.segment_attention import SEGMENT_SDPA
from ett_lightning.tokenizer import FORMATS, VisionTokenizer

EXPORT_FILE = "ett_export.json"
FORMAT_VERSION = 1
LARGEST_MANIFEST = 1 << 20  # bytes; a manifest is a few kilobytes
TEMPLATE_FIELDS = {"question", "caption"}
LARGEST_TEMPLATE = 4096  # characters
LARGEST_NESTING = 16  # folders; an export has two levels
SECTIONS = {"format_version", "stage", "tokenizer", "projector", "language_model", "inputs"}
PROJECTOR = Buildable(MLPProjector, {"in_dim": count, "out_dim": count, "depth": depth, "hidden_dim": optional(count)})
LANGUAGE_MODEL = Buildable(LanguageModel, {"attn_implementation": one_of("sdpa", "eager", "flash_attention_2",
                                                                         SEGMENT_SDPA)})
STAGE = optional(one_of("align", "ett", "posttrain"))


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: every value here has passed its check."""

    directory: Path
    stage: str | None
    tokenizer: tuple[Buildable, dict[str, Any]]
    quantizer: tuple[Buildable, dict[str, Any]]
    source_format: str
    projector: dict[str, Any]
    attn_implementation: str
    inputs: InputSpec | None

    @property
    def path(self) -> Path:
        return self.directory / EXPORT_FILE

    def build_tokenizer(self) -> VisionTokenizer:
        (tokenizer, arch), (quantizer, init_args) = self.tokenizer, self.quantizer
        return tokenizer.cls(quantizer.cls(**init_args), **arch)

    def build_projector(self) -> MLPProjector:
        return MLPProjector(**self.projector)


def read_manifest(directory: str | Path) -> Manifest:
    """The checked manifest of the export in ``directory``; :class:`ExportError` (one line) when it is refused."""
    directory = Path(directory)
    path = directory / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a directory written by `ett export`")
    check_files_inside(directory)
    if path.stat().st_size > LARGEST_MANIFEST:
        raise ExportError(f"{path} is {path.stat().st_size} bytes, too large for a manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ExportError(f"{path} is not JSON in UTF-8 ({type(err).__name__})") from None
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} holds a {type(manifest).__name__}, not a JSON object")
    unknown = sorted(set(manifest) - SECTIONS)
    if unknown:
        raise ExportError(f"{path} has entries this ett_lightning does not read: {', '.join(unknown)[:200]}")
    if type(manifest.get("format_version")) is not int or manifest["format_version"] != FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {manifest.get('format_version')!r:.40}, this ett_lightning "
                          f"reads {FORMAT_VERSION}")
    tokenizer = section(manifest, "tokenizer", path, {"class_path", "arch", "source_format", "quantizer"})
    quantizer = section(tokenizer, "quantizer", path, {"class_path", "init_args"}, "tokenizer.")
    tokenizer_class = TOKENIZERS.find(tokenizer.get("class_path", "ett_lightning.tokenizer.VQTokenizer"),
                                      f"{path}: tokenizer.class_path")
    quantizer_class = QUANTIZERS.find(quantizer.get("class_path"), f"{path}: tokenizer.quantizer.class_path")
    source_format = tokenizer.get("source_format")
    if source_format not in FORMATS:
        raise ExportError(f"{path}: tokenizer.source_format {source_format!r:.40} is none of {', '.join(FORMATS)}")
    language_model = LANGUAGE_MODEL.checked(manifest.get("language_model", {}), f"{path}: language_model")
    return Manifest(
        directory=directory,
        stage=checked_value(STAGE, manifest.get("stage"), f"{path}: stage"),
        tokenizer=(tokenizer_class, tokenizer_class.checked(tokenizer.get("arch"), f"{path}: tokenizer.arch")),
        quantizer=(quantizer_class, quantizer_class.checked(quantizer.get("init_args"),
                                                            f"{path}: tokenizer.quantizer.init_args")),
        source_format=source_format,
        projector=PROJECTOR.checked(manifest.get("projector"), f"{path}: projector"),
        attn_implementation=language_model.get("attn_implementation", "sdpa").replace(SEGMENT_SDPA, "sdpa"),
        inputs=checked_inputs(manifest["inputs"], path) if "inputs" in manifest else None,
    )


def section(parent: dict[str, Any], name: str, path: Path, keys: set[str], prefix: str = "") -> dict[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise ExportError(f"{path}: {prefix}{name} must be a JSON object, found {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ExportError(f"{path}: {prefix}{name} has entries an export may not set: {', '.join(unknown)[:200]}")
    return value


def checked_value(check: Any, value: Any, where: str) -> Any:
    try:
        return check(value)
    except ValueError as err:
        raise ExportError(f"{where}: {err}") from None


def checked_inputs(inputs: Any, path: Path) -> InputSpec:
    """The recorded inputs, with templates that only fill in the question or caption."""
    inputs = section({"inputs": inputs}, "inputs", path, {"image", "prompt"})
    image = section(inputs, "image", path, {"size", *IMAGE_PREPARATION}, "inputs.")
    prompt = section(inputs, "prompt", path, {"layout", "templates", "max_text_tokens"}, "inputs.")
    templates = prompt.get("templates", {})
    if not isinstance(templates, dict) or not all(isinstance(k, str) and len(k) < 64 for k in templates):
        raise ExportError(f"{path}: inputs.prompt.templates must map task names to template strings")
    for task, template in templates.items():
        checked_value(template_text, template, f"{path}: inputs.prompt.templates.{task}")
    return InputSpec(checked_value(side, image.get("size"), f"{path}: inputs.image.size"), dict(templates),
                     checked_value(count, prompt.get("max_text_tokens"), f"{path}: inputs.prompt.max_text_tokens"),
                     checked_value(one_of("image_first", "text_first"), prompt.get("layout"),
                                   f"{path}: inputs.prompt.layout"))


def template_text(value: Any) -> str:
    """A prompt template whose placeholders are plain ``{question}`` / ``{caption}``: ``str.format`` would otherwise
    follow attribute and index lookups a file spells into it."""
    if not isinstance(value, str) or len(value) > LARGEST_TEMPLATE:
        raise ValueError(f"expected a template string of at most {LARGEST_TEMPLATE} characters")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                  if name is not None]
    except ValueError as err:
        raise ValueError(f"not a format template ({err})") from None
    for name, spec, conversion in fields:
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} is none of {', '.join(sorted(TEMPLATE_FIELDS))}")
    return value


def check_files_inside(directory: Path) -> None:
    """Every entry of the export is a regular file or folder inside it: a link to ``~/.ssh`` or ``/etc``, a FIFO that
    would block the reader, a device or a link loop is refused."""
    root = directory.resolve()
    try:
        for folder, folders, files in os.walk(directory):
            if len(Path(folder).relative_to(directory).parts) > LARGEST_NESTING:
                raise ExportError(f"{folder} is nested more than {LARGEST_NESTING} folders deep inside the export")
            for name in folders + files:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.resolve(strict=True).is_relative_to(root):
                    raise ExportError(f"{entry} links to {os.readlink(entry)!s:.120}, outside the export {directory}: "
                                      "an export's files must lie inside it")
                if not (entry.is_file() or entry.is_dir()):
                    raise ExportError(f"{entry} is neither a regular file nor a folder")
    except (OSError, RuntimeError) as err:  # a link loop or a link to nothing
        raise ExportError(f"{directory}: an entry cannot be resolved ({type(err).__name__}: {err!s:.100})") from None
