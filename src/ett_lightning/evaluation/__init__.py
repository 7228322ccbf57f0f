"""Using a tuned model outside training: loading an export for inference (`ett ask`), the lmms-eval model, and
lmms-eval tasks made from VQA shards."""

from ett_lightning.evaluation.inference import InferenceModel

__all__ = ["InferenceModel"]
