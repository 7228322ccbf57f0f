"""``--help`` explains every option a recipe can set: each init parameter of the classes the recipes (and docs)
name has a description, read by jsonargparse from the class docstring's ``Args:``."""

from __future__ import annotations

import importlib
import inspect

import pytest
from jsonargparse import ArgumentParser

RECIPE_CLASSES = [
    "ett_lightning.ETTModule", "ett_lightning.ImageTextDataModule", "ett_lightning.VQTokenizer",
    "ett_lightning.ViTVQTokenizer", "ett_lightning.PretrainedVQTokenizer", "ett_lightning.VectorQuantizer",
    "ett_lightning.IndexBackpropQuantizer", "ett_lightning.MLPProjector", "ett_lightning.LanguageModel",
    "ett_lightning.ETTLoss", "ett_lightning.LPIPSLoss", "ett_lightning.losses.AdversarialLoss",
    "ett_lightning.callbacks.CodeProbe", "ett_lightning.callbacks.GeneratedImageWriter",
    "ett_lightning.callbacks.GenerationMetrics", "ett_lightning.callbacks.MetricsJSON",
    "ett_lightning.callbacks.ReconstructionGrid", "ett_lightning.callbacks.ReconstructionMetrics",
    "ett_lightning.callbacks.VQAEvaluation", "ett_lightning.callbacks.PredictionWriter",
    "ett_lightning.resilience.AtomicCheckpointIO", "ett_lightning.resilience.NonFiniteGuard",
    "ett_lightning.resilience.PreemptionCheckpoint", "ett_lightning.resilience.RNGState",
    "ett_lightning.tasks.TextToImage", "ett_lightning.tasks.TokenizerPretraining",
]


def load(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def undocumented(path: str) -> list[str]:
    """The class's own init parameters that ``--help`` shows without a description, or not at all."""
    cls = load(path)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", fail_untyped=False, sub_configs=True)
    helps = {action.dest.removeprefix("x."): action.help for action in parser._actions if action.dest.startswith("x.")}
    own = [name for name, parameter in inspect.signature(cls.__init__).parameters.items()
           if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    return [name for name in own if not helps.get(name)]


@pytest.mark.parametrize("path", RECIPE_CLASSES)
def test_every_option_has_a_description(path):
    assert not undocumented(path), f"{path}: document these in the class docstring's Args: section"
