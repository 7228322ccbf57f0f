"""Starting from a public tokenizer (VQGAN family or Open-MAGVIT2): architecture from a preset or from the weights,
strict loading."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.tokenizer.base import VisionTokenizer
from ett_lightning.tokenizer.formats import check_format, detect_format, to_ett
from ett_lightning.tokenizer.magvit2 import MAGVIT2Tokenizer
from ett_lightning.tokenizer.quantizers import (
    CodebookQuantizer,
    IndexBackpropQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    VectorQuantizer,
)
from ett_lightning.tokenizer.vq_tokenizer import VQTokenizer
from ett_lightning.utils import load_strict

VQGAN_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                 z_channels=256)
MAGVIT2_F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, resolution=256)
PRESETS: dict[str, dict[str, Any]] = {
    "taming-vqgan-f16-1024": dict(format="taming", arch=VQGAN_F16, codebook=(1024, 256)),
    "taming-vqgan-f16-16384": dict(format="taming", arch=VQGAN_F16, codebook=(16384, 256)),
    "ibq-16384": dict(format="ibq", arch={**VQGAN_F16, "num_res_blocks": 4}, codebook=(16384, 256)),
    "ibq-262144": dict(format="ibq", arch={**VQGAN_F16, "num_res_blocks": 4}, codebook=(262144, 256)),
    "llamagen-vq16": dict(format="llamagen", arch=VQGAN_F16, codebook=(16384, 8)),
    "llamagen-vq8": dict(format="llamagen", arch={**VQGAN_F16, "ch_mult": (1, 2, 2, 4), "attn_resolutions": (32,)},
                         codebook=(16384, 8)),
    "open-magvit2-262144": dict(format="open-magvit2", arch=MAGVIT2_F16, codebook=(262144, 18)),
    "open-magvit2-16384": dict(format="open-magvit2", arch=MAGVIT2_F16, codebook=(16384, 14)),
    "open-magvit2-128-262144": dict(format="open-magvit2", arch={**MAGVIT2_F16, "ch_mult": (1, 2, 2, 4),
                                                                  "resolution": 128}, codebook=(262144, 18)),
}


def format_family(fmt: str) -> tuple[type[VisionTokenizer], type[Quantizer]]:
    """The tokenizer class whose submodules a checkpoint layout names, and the kind of quantizer its own code
    rebuilds: taming / IBQ / LlamaGen / ours, the conv VQGAN with a stored codebook; Open-MAGVIT2, its own encoder
    and decoder with LFQ."""
    if fmt == "open-magvit2":
        return MAGVIT2Tokenizer, LookupFreeQuantizer
    return VQTokenizer, CodebookQuantizer


def default_quantizer(fmt: str, codebook_size: int, code_dim: int) -> Quantizer:
    """The quantizer each family was trained with: IBQ and LFQ (Open-MAGVIT2) for SEED-Voken, l2-normalised VQ for
    LlamaGen."""
    if fmt == "open-magvit2":
        return LookupFreeQuantizer(code_dim)
    if fmt == "ibq":
        return IndexBackpropQuantizer(codebook_size, code_dim)
    return VectorQuantizer(codebook_size, code_dim, l2_norm=fmt == "llamagen")


def infer_architecture(state: dict[str, Tensor], resolution: int) -> dict[str, Any]:
    """Encoder/decoder hyper-parameters read off a state dict in our layout (attention levels are stored as
    feature-map sizes, hence ``resolution``)."""
    if "encoder.conv_in.weight" not in state:
        raise ValueError("cannot infer the tokenizer architecture: no encoder.conv_in.weight in the weights")
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    if "encoder.mid_block.0.conv1.weight" in state:  # Open-MAGVIT2
        return dict(ch=ch, ch_mult=ch_mult, num_res_blocks=len(blocks), resolution=resolution)
    return dict(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(blocks),
        attn_resolutions=tuple(resolution // 2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state),
        resolution=resolution,
        z_channels=state["encoder.conv_out.weight"].shape[0],
    )


class PretrainedVQTokenizer(VisionTokenizer):
    """A tokenizer built around public weights: taming VQGAN, SEED-Voken IBQ, LlamaGen VQ (the conv
    :class:`VQTokenizer`), SEED-Voken Open-MAGVIT2 (:class:`MAGVIT2Tokenizer` with LFQ), or this package's own.

    ``format="auto"`` guesses the layout from key names. The architecture comes from ``preset`` (a name in
    :data:`PRESETS`) or is inferred from the weights; ``quantizer`` overrides the family's default (e.g. IBQ with
    an entropy term for further tuning). Loading is strict after dropping training-only entries (``loss.*``,
    EMA copies, usage buffers); any other mismatch is one error listing the keys. ``source_format`` is kept so
    export can write the tuned weights back in the original layout.

    Args:
        weights: the public checkpoint (safetensors or torch pickle).
        format: its key layout (``taming``, ``ibq``, ``llamagen``, ``open-magvit2``, ``ett``), or ``auto`` to guess
            it from key names.
        preset: a name in :data:`PRESETS` fixing the architecture; None infers it from the weights.
        resolution: the image side the architecture is built for.
        use_ema: load the EMA copy of the weights when the checkpoint has one.
        quantizer: overrides the family's default quantizer (e.g. IBQ with an entropy term).
        gradient_checkpointing: recompute encoder and decoder blocks in the backward pass to save activation memory.
        channels_last: run the convolutions in channels-last memory format.
    """

    def __init__(
        self,
        weights: str,
        format: str = "auto",
        preset: str | None = None,
        resolution: int = 256,
        use_ema: bool = True,
        quantizer: Quantizer | None = None,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        raw = load_state_dict_file(weights)
        fmt = format if format != "auto" else preset_spec(preset)["format"] if preset else detect_format(raw)
        check_format(fmt)
        state = to_ett(raw, fmt, use_ema)
        if preset is not None:
            spec = preset_spec(preset)
            arch, (codebook_size, code_dim) = dict(spec["arch"]), spec["codebook"]
        else:
            arch = infer_architecture(state, resolution)
            codebook_size, code_dim = codebook_shape(state)
        self.family = VQTokenizer if "z_channels" in arch else MAGVIT2Tokenizer  # Open-MAGVIT2: latent = code
        if fmt != "ett" and format_family(fmt)[0] is not self.family:
            raise ValueError(f"{Path(weights).name} is not in the {fmt} layout: its keys are those of a "
                             f"{self.family.__name__} (encoder.mid_block.* is Open-MAGVIT2's, encoder.mid.* the "
                             "VQGAN family's); give the format that matches, or format: auto")
        default = "open-magvit2" if self.family is MAGVIT2Tokenizer else fmt
        body = self.family(quantizer or default_quantizer(default, codebook_size, code_dim), **arch)
        super().__init__(body.encoder, body.decoder, body.quantize, arch.get("z_channels", code_dim),
                         body.downsample_factor, body.arch, gradient_checkpointing, channels_last,
                         latent_convs=self.family is not MAGVIT2Tokenizer)
        load_strict(self, state, f"{Path(weights).name} (format {fmt}{f', preset {preset}' if preset else ''})")
        self.source_format = fmt

    def rebuild_class(self) -> type[VisionTokenizer]:
        """Once loaded it is a plain tokenizer of its family and ``arch``: exports rebuild it without the file."""
        return self.family

    def block_classes(self) -> set[type[nn.Module]]:
        return self.family.block_classes(self)


def codebook_shape(state: dict[str, Tensor]) -> tuple[int, int]:
    """(codebook size, code dim) from an explicit codebook, or from the bits an Open-MAGVIT2 encoder writes."""
    if "quantize.embedding.weight" in state:
        return tuple(state["quantize.embedding.weight"].shape)
    if "encoder.conv_out.weight" in state:
        bits = state["encoder.conv_out.weight"].shape[0]
        return 2**bits, bits
    raise ValueError("cannot infer the codebook: the weights hold neither quantize.embedding.weight nor an encoder")


def preset_spec(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
