"""The repeated blocks of an ETT module: the units FSDP2 shards (and recomputes under activation checkpointing)."""

from __future__ import annotations

from torch import nn


def wrap_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The block classes to shard as units: the LLM's decoder layers (Hugging Face's ``_no_split_modules``) and the
    tokenizer's repeated blocks (``VisionTokenizer.block_classes``)."""
    classes: set[type[nn.Module]] = set()
    llm = getattr(getattr(module, "language_model", None), "model", None)
    names = set(getattr(llm, "_no_split_modules", None) or [])
    if llm is not None:
        classes |= {type(m) for m in llm.modules() if type(m).__name__ in names}
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None:
        classes |= set(tokenizer.block_classes())
    return classes


def loss_networks(module: nn.Module) -> nn.Module | None:
    """The module's loss when it holds networks (LPIPS, a discriminator): a unit of its own, kept in its parameters'
    dtype under every policy; None when the loss has no parameters."""
    loss = getattr(module, "loss", None)
    return loss if isinstance(loss, nn.Module) and any(True for _ in loss.parameters()) else None
