"""Starting a module's components (tokenizer, projector, LLM) from another run's checkpoint."""

from __future__ import annotations

import logging

from torch import nn

from ett_lightning.checkpoints.files import load_state_dict_file
from ett_lightning.models.language_model import LanguageModel
from ett_lightning.utils import load_strict

log = logging.getLogger(__name__)


def load_component_weights(module: nn.Module, path: str, names: tuple[str, ...]) -> list[str]:
    """Loads ``module.<name>`` strictly from the ``<name>.*`` entries of a checkpoint for each of ``names`` the
    checkpoint holds; returns the names loaded. A checkpoint holding none of them is an error."""
    state = load_state_dict_file(path)
    loaded = []
    for name in names:
        prefix = f"{name}."
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if part:
            component = getattr(module, name)
            if isinstance(component, LanguageModel):  # LLM weights saved without adapters start a LoRA LLM
                part = component.loadable_state(part)
            load_strict(component, part, f"{path} [{name}]")
            loaded.append(name)
    if not loaded:
        raise ValueError(f"{path} holds weights for none of {list(names)}: not an ett_lightning checkpoint?")
    log.info("init_from %s loaded %s", path, ", ".join(loaded))
    return loaded
