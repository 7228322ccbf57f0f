"""Data: shards streamed to decoded samples (``streaming``), texts to token sequences (``sequences``), samples to
batches (``batching``), and the data module that joins them. Names below are imported when first used."""

from ett_lightning.lazy_exports import lazy_exports

EXPORTS = {
    "ETTBatch": "ett_lightning.data.batching.batch",
    "EvenSplit": "ett_lightning.data.streaming.even_split",
    "IGNORE_INDEX": "ett_lightning.data.sequences.token_sequence",
    "ImageTextDataModule": "ett_lightning.data.datamodule",
    "PromptBatch": "ett_lightning.data.batching.prompts",
    "SequenceBuilder": "ett_lightning.data.sequences.sequence_builder",
    "SkipCounter": "ett_lightning.data.skips",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
