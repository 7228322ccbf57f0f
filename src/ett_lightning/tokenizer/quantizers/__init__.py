"""Quantizers: straight-through VQ and index backpropagation (IBQ)."""

from ett_lightning.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from ett_lightning.tokenizer.quantizers.ibq import IndexBackpropQuantizer
from ett_lightning.tokenizer.quantizers.vector import VectorQuantizer

__all__ = ["IndexBackpropQuantizer", "Quantizer", "QuantizerOutput", "VectorQuantizer"]
