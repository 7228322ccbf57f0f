"""LoRA adapters on the LLM (through ``peft``): stage 2 tunes the tokenizer and projector fully and the LLM through
low-rank adapters, so a 7B model's frozen weights need no gradients and no optimizer states."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import Tensor, nn
from transformers import PreTrainedModel

ADAPTER_MARK = ".lora_"


@dataclass
class LoRA:
    """Low-rank adapters added to the LLM's linear layers; the LLM's own weights stay frozen.

    Args:
        rank: rank ``r`` of each adapter (``W + B @ A`` with ``A``: r x in, ``B``: out x r).
        alpha: scale numerator: the adapter's output is multiplied by ``alpha / rank``.
        dropout: dropout on the adapter's input while training.
        target_modules: names (or name suffixes) of the linear layers that get adapters; ``all-linear`` is every
            linear layer of the decoder except the output head.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"])

    def attach(self, model: PreTrainedModel) -> nn.Module:
        """``model`` wrapped by ``peft`` with fresh adapters (``B`` is zero: the output is unchanged at first)."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self.target_modules)
        return get_peft_model(model, config)


def is_adapter(name: str) -> bool:
    """Whether parameter ``name`` belongs to an adapter (what trains in a LoRA LLM)."""
    return ADAPTER_MARK in name


def merged(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model equal to ``model`` with its adapters folded into the weights (``W + s B A``); the
    adapted ``model`` itself is left as it was (the merge works on a copy).

    The sum is formed in float32 and each weight cast back to its own dtype once: merged in bf16, an update whose
    entries are far below a weight's bf16 spacing (``s B A`` ~ 4e-5 beside weights ~ 1e-2) would be rounded away
    in part, and the exported model would not be the trained one."""
    dtypes = {plain_name(name): parameter.dtype for name, parameter in model.named_parameters() if not is_adapter(name)}
    plain = copy.deepcopy(model).float().merge_and_unload()
    for name, parameter in plain.named_parameters():
        parameter.data = parameter.data.to(dtypes[name])
    return plain


def plain_keys_to_adapted(state: dict[str, Tensor], adapted: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state``, written by an LLM without adapters, renamed for the adapted LLM whose own state is ``adapted``,
    whose adapters join it with their values in ``adapted``."""
    by_plain_name = {plain_name(key): key for key in adapted if not is_adapter(key)}
    renamed = {by_plain_name.get(key, key): value for key, value in state.items()}
    return renamed | {key: value for key, value in adapted.items() if is_adapter(key)}


def plain_name(adapted_key: str) -> str:
    """``model.base_model.model.model.layers.0.q_proj.base_layer.weight`` -> ``model.model.layers.0.q_proj.weight``:
    the name the same weight has in the LLM without adapters."""
    return adapted_key.replace("base_model.model.", "", 1).replace(".base_layer.", ".")

