"""Lightning callbacks that drive evaluation: reconstruction and generation metrics, VQA accuracy, pictures,
metrics.json, and the code probe."""

from ett_lightning.callbacks.code_probe import CodeProbe
from ett_lightning.callbacks.generated_images import GeneratedImageWriter
from ett_lightning.callbacks.generation_eval import GenerationMetrics
from ett_lightning.callbacks.image_grid import ReconstructionGrid
from ett_lightning.callbacks.metrics_json import MetricsJSON
from ett_lightning.callbacks.prediction_writer import PredictionWriter
from ett_lightning.callbacks.reconstruction import ReconstructionMetrics
from ett_lightning.callbacks.vqa_eval import VQAEvaluation

__all__ = ["CodeProbe", "GeneratedImageWriter", "GenerationMetrics", "MetricsJSON", "ReconstructionGrid",
           "PredictionWriter", "ReconstructionMetrics", "VQAEvaluation"]
