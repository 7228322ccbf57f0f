"""Vision tokenizers: VQGAN-family conv, Open-MAGVIT2 conv or ViT encoder/decoder, with explicit-codebook (VQ, IBQ)
or implicit-codebook (LFQ, FSQ) quantizers."""

from ett_lightning.tokenizer.base import TokenizerOutput, VisionTokenizer, codebook_stats
from ett_lightning.tokenizer.decoder import Decoder
from ett_lightning.tokenizer.encoder import Encoder
from ett_lightning.tokenizer.formats import FORMATS, detect_format, from_ett, to_ett
from ett_lightning.tokenizer.magvit2 import MAGVIT2Tokenizer
from ett_lightning.tokenizer.pretrained import PRESETS, PretrainedVQTokenizer, infer_architecture
from ett_lightning.tokenizer.quantizers import (
    CodebookQuantizer,
    FiniteScalarQuantizer,
    IndexBackpropQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    QuantizerOutput,
    VectorQuantizer,
)
from ett_lightning.tokenizer.vit import ViTDecoder, ViTEncoder, ViTVQTokenizer
from ett_lightning.tokenizer.vq_tokenizer import VQTokenizer

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
    "CodebookQuantizer",
    "FiniteScalarQuantizer",
    "IndexBackpropQuantizer",
    "LookupFreeQuantizer",
    "MAGVIT2Tokenizer",
    "Quantizer",
    "QuantizerOutput",
    "TokenizerOutput",
    "VQTokenizer",
    "ViTDecoder",
    "ViTEncoder",
    "ViTVQTokenizer",
    "VisionTokenizer",
    "VectorQuantizer",
    "codebook_stats",
]
