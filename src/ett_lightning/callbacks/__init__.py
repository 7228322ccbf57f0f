"""Lightning callbacks that drive evaluation: reconstruction metrics, VQA accuracy, pictures, metrics.json."""

from ett_lightning.callbacks.image_grid import ReconstructionGrid
from ett_lightning.callbacks.metrics_json import MetricsJSON
from ett_lightning.callbacks.reconstruction import ReconstructionMetrics
from ett_lightning.callbacks.vqa_eval import VQAEvaluation

__all__ = ["MetricsJSON", "ReconstructionGrid", "ReconstructionMetrics", "VQAEvaluation"]
