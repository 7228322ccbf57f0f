"""FSDP that shards ETT's repeated blocks as units without a policy written in Python."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

log = logging.getLogger(__name__)


def wrap_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The block classes to shard as FSDP units: the LLM's decoder layers (Hugging Face's ``_no_split_modules``)
    and the tokenizer's repeated blocks (``VisionTokenizer.block_classes``)."""
    classes: set[type[nn.Module]] = set()
    llm = getattr(getattr(module, "language_model", None), "model", None)
    names = set(getattr(llm, "_no_split_modules", None) or [])
    if llm is not None:
        classes |= {type(m) for m in llm.modules() if type(m).__name__ in names}
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None:
        classes |= set(tokenizer.block_classes())
    return classes


class ETTFSDPStrategy(FSDPStrategy):
    """Lightning's :class:`FSDPStrategy` whose default ``auto_wrap_policy`` wraps each LLM decoder layer and each
    tokenizer block (see :func:`wrap_classes`), found from the model being trained, so a YAML recipe needs no
    class list: ``strategy: {class_path: ett_lightning.distributed.ETTFSDPStrategy}``. Every other argument is
    ``FSDPStrategy``'s; an explicit ``auto_wrap_policy`` wins. Parameters keep their names
    (``use_orig_params``), so frozen components, per-component optimizer groups and checkpoints work as under
    DDP.
    """

    def setup(self, trainer: L.Trainer) -> None:
        self.configure_wrap_policy(self.lightning_module)
        super().setup(trainer)

    def configure_wrap_policy(self, module: nn.Module) -> None:
        """Sets ``auto_wrap_policy`` to the module's :func:`wrap_classes` unless one was given."""
        if "auto_wrap_policy" in self.kwargs:
            return
        classes = wrap_classes(module)
        if classes:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
            log.info("FSDP units: %s", ", ".join(sorted(c.__name__ for c in classes)))
