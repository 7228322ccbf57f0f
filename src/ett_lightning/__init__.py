"""ett_lightning: End-to-End Vision Tokenizer Tuning (arXiv 2505.10562) as PyTorch Lightning modules.

The names below are imported when first used, so importing the package (a converter, a DataLoader worker) does not
import Lightning, transformers or the models."""

from ett_lightning.lazy_exports import lazy_exports

EXPORTS = {
    "ETTBatch": "ett_lightning.data.batching.batch",
    "ETTLoss": "ett_lightning.losses",
    "ETTModule": "ett_lightning.module",
    "FiniteScalarQuantizer": "ett_lightning.tokenizer",
    "ImageTextDataModule": "ett_lightning.data.datamodule",
    "IndexBackpropQuantizer": "ett_lightning.tokenizer",
    "LPIPSLoss": "ett_lightning.losses",
    "LookupFreeQuantizer": "ett_lightning.tokenizer",
    "MAGVIT2Tokenizer": "ett_lightning.tokenizer",
    "LanguageModel": "ett_lightning.models",
    "MLPProjector": "ett_lightning.models",
    "PretrainedVQTokenizer": "ett_lightning.tokenizer",
    "VQTokenizer": "ett_lightning.tokenizer",
    "VectorQuantizer": "ett_lightning.tokenizer",
    "ViTVQTokenizer": "ett_lightning.tokenizer",
    "VisionTokenizer": "ett_lightning.tokenizer",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
