"""Losses: the weighted ETT objective, the LPIPS perceptual term, and the adversarial term with its
discriminators."""

from ett_lightning.losses.adversarial import AdversarialLoss, adaptive_weight
from ett_lightning.losses.discriminator import PatchGANDiscriminator, TimmDiscriminator
from ett_lightning.losses.ett_loss import ETTLoss
from ett_lightning.losses.perceptual import LPIPSLoss

__all__ = ["AdversarialLoss", "ETTLoss", "LPIPSLoss", "PatchGANDiscriminator", "TimmDiscriminator", "adaptive_weight"]
