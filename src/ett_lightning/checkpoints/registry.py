"""The classes an export's manifest may name, and what a file may pass each of them.

An export is untrusted input: its manifest names the tokenizer and quantizer classes to rebuild and their
arguments. Names are looked up in the tables below, which hold classes already imported by this package; nothing a
file names is imported, and no argument reaches a constructor unless it is listed here with a check of its value.
Arguments that read files (``weights``, ``encoder_weights``) or reach the network (a timm ``hf-hub:`` model name)
are not listed: an export carries its weights itself.

A subclass of your own is rebuilt from exports once it is registered (before loading, in the code that loads)::

    from ett_lightning.checkpoints.registry import TOKENIZERS, count
    TOKENIZERS.register(MyTokenizer, {"width": count, "depth": count})
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ett_lightning.tokenizer import (
    FiniteScalarQuantizer,
    IndexBackpropQuantizer,
    LookupFreeQuantizer,
    MAGVIT2Tokenizer,
    VectorQuantizer,
    ViTVQTokenizer,
    VQTokenizer,
)

Check = Callable[[Any], Any]
LARGEST_COUNT = 2**24  # far above any width or codebook size in use; the weights file decides the rest
LARGEST_DEPTH = 1024  # layers or blocks; the models are built (on the meta device) before their weights are compared
LARGEST_SIDE = 8192  # pixels


class ExportError(ValueError):
    """An export that cannot be loaded as it is: one line that names the file, the entry and what is wrong."""


def whole(largest: int, kind: str = "a whole number") -> Check:
    """A check of a whole number from 1 to ``largest`` (booleans, which are ints to Python, refused)."""

    def checked(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
            raise ValueError(f"expected {kind} from 1 to {largest}, found {value!r:.80}")
        return value

    return checked


def wholes(shortest: int) -> Check:
    """A check of a list of ``shortest`` to 16 whole numbers (channel multipliers, attention resolutions)."""

    def checked(value: Any) -> tuple[int, ...]:
        if not isinstance(value, list | tuple) or not shortest <= len(value) <= 16:
            raise ValueError(f"expected a list of {shortest} to 16 whole numbers, found {value!r:.80}")
        return tuple(count(item) for item in value)

    return checked


count = whole(LARGEST_COUNT)  # a width, a codebook size
depth = whole(LARGEST_DEPTH)  # layers or blocks: building a model is linear in it, before any weight is compared
side = whole(LARGEST_SIDE, "an image side in pixels")
counts = wholes(0)  # attention resolutions: none is allowed
levels = wholes(1)  # channel multipliers: one per level, at least one


def real(value: Any) -> float:
    """A finite number (a loss weight, a dropout rate, a temperature)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, found {value!r:.80}")
    return float(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {value!r:.80}")
    return value


def optional(check: Check) -> Check:
    def maybe(value: Any) -> Any:
        return None if value is None else check(value)

    return maybe


def one_of(*choices: str) -> Check:
    def chosen(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, found {value!r:.80}")
        return value

    return chosen


def timm_architecture(value: Any) -> str:
    """A timm model name: an architecture built without weights, never a hub address (``hf-hub:...``)."""
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9_.]{1,100}", value):
        raise ValueError(f"expected a timm architecture name (letters, digits, '_' and '.'), found {value!r:.80}")
    return value


@dataclass(frozen=True)
class Buildable:
    """A class a manifest may name, with a check for each argument a file may give it."""

    cls: type
    arguments: dict[str, Check]

    def checked(self, arguments: Any, where: str) -> dict[str, Any]:
        """``arguments`` with every value checked; an unknown or bad one raises :class:`ExportError`."""
        if not isinstance(arguments, dict):
            raise ExportError(f"{where} must be a mapping of arguments, found {type(arguments).__name__}")
        unknown = sorted(set(arguments) - set(self.arguments))
        if unknown:
            raise ExportError(f"{where} gives {self.cls.__name__} arguments an export may not set: "
                              f"{', '.join(map(str, unknown))[:200]} (allowed: {', '.join(self.arguments)})")
        checked = {}
        for name, value in arguments.items():
            try:
                checked[name] = self.arguments[name](value)
            except ValueError as err:
                raise ExportError(f"{where}.{name}: {err}") from None
        return checked


@dataclass
class Registry:
    """Buildable classes by the class paths exports write (``module.QualName``) and their public aliases."""

    kind: str
    entries: dict[str, Buildable] = field(default_factory=dict)

    def register(self, cls: type, arguments: dict[str, Check], *aliases: str) -> None:
        buildable = Buildable(cls, arguments)
        for path in (class_path(cls), *aliases):
            self.entries[path] = buildable

    def find(self, path: Any, where: str) -> Buildable:
        """The entry for ``path``, found without importing anything; refused with the allowed names otherwise."""
        if isinstance(path, str) and path in self.entries:
            return self.entries[path]
        allowed = sorted({class_path(entry.cls) for entry in self.entries.values()})
        raise ExportError(f"{where} names {path!r:.120}, which is not a {self.kind} an export may name "
                          f"(allowed: {', '.join(allowed)}); refusing to build it")


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


CONV_ARCHITECTURE = {"ch": count, "ch_mult": levels, "num_res_blocks": depth, "attn_resolutions": counts,
                     "resolution": side, "z_channels": count, "dropout": real}
VIT_ARCHITECTURE = {"image_size": side, "patch_size": count, "encoder_model": timm_architecture, "width": count,
                    "depth": depth, "num_heads": count, "decoder_depth": optional(depth)}
MAGVIT2_ARCHITECTURE = {"ch": count, "ch_mult": levels, "num_res_blocks": depth, "resolution": side}
QUANTIZER = {"codebook_size": count, "code_dim": count, "beta": real, "l2_norm": flag, "entropy_weight": real,
             "entropy_temperature": real}
LOOKUP_FREE = {"bits": whole(24, "a number of bits"), "entropy_weight": real, "commitment_weight": real,
               "diversity_gamma": real, "entropy_temperature": real}
FINITE_SCALAR = {"levels": levels}

TOKENIZERS = Registry("tokenizer")
TOKENIZERS.register(VQTokenizer, CONV_ARCHITECTURE, "ett_lightning.tokenizer.VQTokenizer")
TOKENIZERS.register(ViTVQTokenizer, VIT_ARCHITECTURE, "ett_lightning.tokenizer.ViTVQTokenizer")
TOKENIZERS.register(MAGVIT2Tokenizer, MAGVIT2_ARCHITECTURE, "ett_lightning.tokenizer.MAGVIT2Tokenizer")

QUANTIZERS = Registry("quantizer")
QUANTIZERS.register(VectorQuantizer, QUANTIZER, "ett_lightning.tokenizer.VectorQuantizer")
QUANTIZERS.register(IndexBackpropQuantizer, QUANTIZER,
                    "ett_lightning.tokenizer.IndexBackpropQuantizer")
QUANTIZERS.register(LookupFreeQuantizer, LOOKUP_FREE, "ett_lightning.tokenizer.LookupFreeQuantizer")
QUANTIZERS.register(FiniteScalarQuantizer, FINITE_SCALAR, "ett_lightning.tokenizer.FiniteScalarQuantizer")
