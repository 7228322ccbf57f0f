"""ett_lightning: End-to-End Vision Tokenizer Tuning (arXiv 2505.10562) as PyTorch Lightning modules."""

from ett_lightning.data import ETTBatch, ImageTextDataModule
from ett_lightning.losses import ETTLoss, LPIPSLoss
from ett_lightning.models import LanguageModel, MLPProjector
from ett_lightning.module import ETTModule
from ett_lightning.tokenizer import (
    IndexBackpropQuantizer,
    PretrainedVQTokenizer,
    VectorQuantizer,
    VisionTokenizer,
    ViTVQTokenizer,
    VQTokenizer,
)

__all__ = [
    "ETTBatch",
    "ETTLoss",
    "ETTModule",
    "ImageTextDataModule",
    "IndexBackpropQuantizer",
    "LPIPSLoss",
    "LanguageModel",
    "MLPProjector",
    "PretrainedVQTokenizer",
    "VQTokenizer",
    "VectorQuantizer",
    "ViTVQTokenizer",
    "VisionTokenizer",
]
