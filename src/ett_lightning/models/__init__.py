"""LLM-side components: the MLP projector and the Hugging Face language-model wrapper."""

from ett_lightning.models.language_model import LanguageModel
from ett_lightning.models.lora import LoRA
from ett_lightning.models.projector import MLPProjector
from ett_lightning.models.text_tokenizer import IMAGE_BEGIN, IMAGE_END, byte_level_tokenizer, load_text_tokenizer

__all__ = ["IMAGE_BEGIN", "IMAGE_END", "LanguageModel", "LoRA", "MLPProjector", "byte_level_tokenizer",
           "load_text_tokenizer"]
