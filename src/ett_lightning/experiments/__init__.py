"""Experiments built from ordinary ``lightning`` runs: the CPU demo of the paper's claim (``ett demo``)."""

from ett_lightning.experiments.runs import LightningRun

__all__ = ["LightningRun"]
