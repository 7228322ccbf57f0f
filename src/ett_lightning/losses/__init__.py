"""Losses: the weighted ETT objective and the LPIPS perceptual term."""

from ett_lightning.losses.ett_loss import ETTLoss
from ett_lightning.losses.perceptual import LPIPSLoss

__all__ = ["ETTLoss", "LPIPSLoss"]
