"""Quantizers: explicit codebooks (straight-through VQ, index backpropagation IBQ) and implicit ones (lookup-free
LFQ, finite scalar FSQ)."""

from ett_lightning.tokenizer.quantizers.base import Quantizer, QuantizerOutput
from ett_lightning.tokenizer.quantizers.codebook import CodebookQuantizer
from ett_lightning.tokenizer.quantizers.finite_scalar import FiniteScalarQuantizer
from ett_lightning.tokenizer.quantizers.ibq import IndexBackpropQuantizer
from ett_lightning.tokenizer.quantizers.lookup_free import LookupFreeQuantizer
from ett_lightning.tokenizer.quantizers.vector import VectorQuantizer

__all__ = ["CodebookQuantizer", "FiniteScalarQuantizer", "IndexBackpropQuantizer", "LookupFreeQuantizer",
           "Quantizer", "QuantizerOutput", "VectorQuantizer"]
