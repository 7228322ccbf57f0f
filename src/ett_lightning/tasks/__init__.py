"""LightningModules for tasks beyond ETT's understanding stages."""

from ett_lightning.tasks.text_to_image import TextToImage
from ett_lightning.tasks.tokenizer_pretraining import TokenizerPretraining

__all__ = ["TextToImage", "TokenizerPretraining"]
