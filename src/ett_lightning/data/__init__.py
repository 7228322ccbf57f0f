"""Data: webdataset streaming, sample decoding, transforms, collation, synthetic shards."""

from ett_lightning.data.batch import ETTBatch
from ett_lightning.data.datamodule import ImageTextDataModule
from ett_lightning.data.even_split import EvenSplit
from ett_lightning.data.prompts import PromptBatch
from ett_lightning.data.sequence import IGNORE_INDEX, SequenceBuilder
from ett_lightning.data.skips import SkipCounter

__all__ = ["ETTBatch", "EvenSplit", "IGNORE_INDEX", "ImageTextDataModule", "PromptBatch", "SequenceBuilder",
           "SkipCounter"]
