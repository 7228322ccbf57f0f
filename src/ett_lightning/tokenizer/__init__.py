"""Vision tokenizers: VQGAN-family conv or ViT encoder/decoder with straight-through VQ or IBQ quantizers."""

from ett_lightning.tokenizer.base import TokenizerOutput, VisionTokenizer, codebook_stats
from ett_lightning.tokenizer.decoder import Decoder
from ett_lightning.tokenizer.encoder import Encoder
from ett_lightning.tokenizer.formats import FORMATS, detect_format, from_ett, to_ett
from ett_lightning.tokenizer.pretrained import PRESETS, PretrainedVQTokenizer, infer_architecture
from ett_lightning.tokenizer.quantizers import IndexBackpropQuantizer, Quantizer, QuantizerOutput, VectorQuantizer
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
    "IndexBackpropQuantizer",
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
