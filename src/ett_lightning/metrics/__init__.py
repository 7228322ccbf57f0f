"""torchmetrics Metrics for ETT evaluation."""

from ett_lightning.metrics.codebook import CodebookUsage
from ett_lightning.metrics.image_psnr import MeanImagePSNR
from ett_lightning.metrics.vqa import VQAAccuracy, normalize_answer, soft_accuracy

__all__ = ["CodebookUsage", "MeanImagePSNR", "VQAAccuracy", "normalize_answer", "soft_accuracy"]
