"""What turns an image and a question into model input, as an export records it for inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ett_lightning.data.sequences.sequence_builder import DEFAULT_TEMPLATES

IMAGE_PREPARATION = {"resize": "shorter side to size, bicubic", "crop": "centre square", "channels": "RGB",
                     "range": [-1.0, 1.0], "scale": "uint8 / 127.5 - 1"}


@dataclass(frozen=True)
class InputSpec:
    """The data side of a trained model: the square ``image_size`` its images were cropped to, the prompt
    ``templates`` and the ``max_text_tokens`` of its sequences, and the sequence ``layout``.

    Training takes these from the data module (``ImageTextDataModule``'s arguments); an export writes them to
    ``ett_export.json`` (see :meth:`to_manifest`), so that ``ett ask``, the lmms-eval model and any other harness
    prepare images and prompts as training did. The image preparation itself is fixed (``IMAGE_PREPARATION``).
    """

    image_size: int
    templates: dict[str, str] = field(default_factory=dict)
    max_text_tokens: int = 128
    layout: str = "image_first"

    @property
    def all_templates(self) -> dict[str, str]:
        """The package's default templates with this model's own on top."""
        return {**DEFAULT_TEMPLATES, **self.templates}

    def to_manifest(self) -> dict[str, Any]:
        return {"image": {"size": self.image_size, **IMAGE_PREPARATION},
                "prompt": {"layout": self.layout, "templates": self.all_templates,
                           "max_text_tokens": self.max_text_tokens}}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        image, prompt = manifest["image"], manifest["prompt"]
        return cls(int(image["size"]), dict(prompt["templates"]), int(prompt["max_text_tokens"]), prompt["layout"])

    @classmethod
    def from_data_arguments(cls, arguments: dict[str, Any], layout: str = "image_first") -> InputSpec:
        """From a data module's arguments (``data.init_args`` of a run's config.yaml, or the arguments as a dict)."""
        arguments = arguments.get("init_args", arguments)
        return cls(int(arguments.get("image_size", 256)), dict(arguments.get("templates") or {}),
                   int(arguments.get("max_text_tokens", 128)), layout)
