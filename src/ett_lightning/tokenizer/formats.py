"""Public VQ tokenizer checkpoint layouts <-> this package's layout, by key name.

Our modules use the taming-transformers names (``encoder.down.{i}.block.{j}``, ``encoder.mid.block_1``,
``decoder.up.{i}``, ``quantize.embedding.weight``, ``quant_conv``, ``post_quant_conv``), so:

* ``taming``: VQGAN Lightning checkpoints (``state_dict``); the weights load by name, ``loss.*`` (LPIPS and
  discriminator) is dropped.
* ``ibq``: SEED-Voken IBQ checkpoints: the taming layout plus optional ``model_ema.*`` EMA copies, stored
  under the parameter name with its dots removed; ``use_ema`` picks them (the released weights are the EMA ones).
* ``llamagen``: LlamaGen VQ-8/VQ-16 (``model`` or ``ema`` in a ``.pt``): ``conv_blocks.{k}.res/attn/downsample``,
  ``mid.{0,1,2}``, decoder levels in run order, an l2-normalised codebook and a ``codebook_used`` usage buffer.
* ``open-magvit2``: SEED-Voken Open-MAGVIT2 Lightning checkpoints (``state_dict``): the names of
  :class:`~ett_lightning.tokenizer.MAGVIT2Tokenizer` (``encoder.mid_block.{k}``, ``decoder.adaptive.{i}``, no
  ``quant_conv``), no quantizer entries (the +-1 codebook is computed), EMA copies as IBQ's.
* ``ett``: this package's own layout (what :mod:`ett_lightning.checkpoints.export` writes as safetensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor

FORMATS = ("ett", "taming", "ibq", "llamagen", "open-magvit2")
WITH_EMA = ("ibq", "open-magvit2")  # formats whose checkpoints may carry LitEma copies
DROPPED_PREFIXES = ("loss.", "model_ema.", "quantize.codebook_used")
MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}
MID_BACK = {v: k for k, v in MID.items()}


def detect_format(state: dict[str, Tensor]) -> str:
    """Guesses the layout from key names (LlamaGen's ``conv_blocks``, Open-MAGVIT2's adaptive norms, IBQ's EMA
    copies, else taming/ours)."""
    if any(".conv_blocks." in k for k in state):
        return "llamagen"
    if any(k.startswith("decoder.adaptive.") for k in state):  # this package's MAGVIT2Tokenizer uses the same names
        return "open-magvit2"
    if any(k.startswith("model_ema.") for k in state):
        return "ibq"
    if any(k.startswith("loss.") for k in state):
        return "taming"
    return "ett"


def to_ett(state: dict[str, Tensor], fmt: str, use_ema: bool = True) -> dict[str, Tensor]:
    """A public state dict in layout ``fmt`` -> our key names (training-only entries dropped)."""
    check_format(fmt)
    if fmt in WITH_EMA and use_ema and any(k.startswith("model_ema.") for k in state):
        state = with_ema_weights(state)
    if fmt == "llamagen":
        state = rename(state, llamagen_to_taming, num_levels(state, r"encoder\.conv_blocks\.(\d+)\."))
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def from_ett(state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Our state dict -> the key names of layout ``fmt`` (for export back to the original format)."""
    check_format(fmt)
    if fmt == "llamagen":
        return rename(state, taming_to_llamagen, num_levels(state, r"encoder\.down\.(\d+)\."))
    return dict(state)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown tokenizer checkpoint format {fmt!r}; supported: {', '.join(FORMATS)}")


def with_ema_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replaces every weight that has an IBQ/LitEma copy (``model_ema.<name without dots>``) by that copy."""
    ema = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.")}
    return {k: ema.get(k.replace(".", ""), v) for k, v in state.items()}


def num_levels(state: dict[str, Tensor], level_pattern: str) -> int:
    levels = {int(m.group(1)) for k in state if (m := re.match(level_pattern, k))}
    if not levels:
        raise ValueError("no encoder levels found in the state dict; is this a VQGAN-family tokenizer checkpoint?")
    return max(levels) + 1


def rename(state: dict[str, Tensor], mapping: Callable[[str, int], str], levels: int) -> dict[str, Tensor]:
    return {mapping(k, levels): v for k, v in state.items()}


def llamagen_to_taming(key: str, levels: int) -> str:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    if m := re.match(r"mid\.(\d)\.(.*)", rest):
        return f"{side}.mid.{MID[m.group(1)]}.{m.group(2)}"
    if m := re.match(r"conv_blocks\.(\d+)\.(res|attn|downsample|upsample)(.*)", rest):
        index, part, tail = int(m.group(1)), m.group(2), m.group(3)
        level = index if side == "encoder" else levels - 1 - index
        return f"{side}.{'down' if side == 'encoder' else 'up'}.{level}.{ {'res': 'block'}.get(part, part)}{tail}"
    return key


def taming_to_llamagen(key: str, levels: int) -> str:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    if m := re.match(r"mid\.(block_1|attn_1|block_2)\.(.*)", rest):
        return f"{side}.mid.{MID_BACK[m.group(1)]}.{m.group(2)}"
    if m := re.match(r"(down|up)\.(\d+)\.(block|attn|downsample|upsample)(.*)", rest):
        level, part, tail = int(m.group(2)), m.group(3), m.group(4)
        index = level if side == "encoder" else levels - 1 - level
        return f"{side}.conv_blocks.{index}.{ {'block': 'res'}.get(part, part)}{tail}"
    return key
