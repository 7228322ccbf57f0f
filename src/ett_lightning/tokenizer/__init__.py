"""Vision tokenizers: VQGAN-family encoder/decoder with straight-through VQ or IBQ quantizers."""

from ett_lightning.tokenizer.decoder import Decoder
from ett_lightning.tokenizer.encoder import Encoder
from ett_lightning.tokenizer.formats import FORMATS, detect_format, from_ett, to_ett
from ett_lightning.tokenizer.pretrained import PRESETS, PretrainedVQTokenizer, infer_architecture
from ett_lightning.tokenizer.quantizers import IndexBackpropQuantizer, Quantizer, QuantizerOutput, VectorQuantizer
from ett_lightning.tokenizer.vq_tokenizer import TokenizerOutput, VQTokenizer, codebook_stats

__all__ = [
    "FORMATS",
    "PRESETS",
    "Decoder",
    "Encoder",
    "PretrainedVQTokenizer",
    "detect_format",
    "from_ett",
    "infer_architecture",
    "to_ett",
    "IndexBackpropQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "TokenizerOutput",
    "VQTokenizer",
    "VectorQuantizer",
    "codebook_stats",
]
