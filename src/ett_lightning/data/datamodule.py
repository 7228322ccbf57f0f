"""ImageTextDataModule: streams image-text webdataset shards into :class:`ETTBatch` es, DDP-correct."""

from __future__ import annotations

import math

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from webdataset.utils import pytorch_worker_info

from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.batching.prompts import PromptBatch, PromptCollator, read_prompts
from ett_lightning.data.loader_workers import end_workers_at_exit, ignore_stop_signals
from ett_lightning.data.sequences.sequence_builder import Layout, SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.data.streaming.decoding import SampleDecoder
from ett_lightning.data.streaming.even_split import EvenSplit
from ett_lightning.data.streaming.seeded_shuffle import SeededShuffle
from ett_lightning.data.streaming.shards import OrderedShardStream, ResampledShardStream, expand_shards
from ett_lightning.data.streaming.tar_stream import tar_to_samples
from ett_lightning.data.streaming.transforms import ImageTransform


class ImageTextDataModule(L.LightningDataModule):
    """Caption (img2dataset layout) and VQA shards -> tokenized, collated batches.

    Training reads an endless stream: every (rank, worker) resamples a disjoint subset of the shards, shuffles
    samples in a buffer, and stops after ``samples_per_epoch / world_size`` samples, so every rank runs the
    same number of steps. Validation is one ordered pass split by sample over ranks and workers, padded so every
    rank runs the same number of batches (:class:`EvenSplit`).

    The text tokenizer, the number of image tokens and the sequence layout come from the model being trained
    (``text_tokenizer``, ``num_image_tokens(image_size)`` and ``sequence_layout`` on the LightningModule) unless
    :meth:`attach` gave them. ``predict_prompts`` (a list, or a text file with one prompt per line) makes
    ``lightning predict`` generate images from those prompts instead of reading the validation shards.

    ``pack_length`` packs each training batch's samples into rows of up to that many LLM tokens (see
    :mod:`~ett_lightning.data.batching.packing`): the same samples and loss, without the LLM computing on padding.
    Validation batches keep one sample per row, as generation needs.

    Args:
        train_shards: training shards: a brace pattern (``train-{000000..000099}.tar``), a glob, or a list of them.
        val_shards: validation shards, in the same forms; None for no validation.
        batch_size: samples per batch on each rank.
        num_workers: DataLoader worker processes per rank.
        image_size: side of the square images fed to the tokenizer (resized on the short side, then cropped).
        shuffle_buffer: samples held in the training shuffle buffer.
        seed: seed of shard resampling and shuffling (combined with rank, worker and the step a run starts at).
        samples_per_epoch: training samples per epoch over all ranks.
        max_text_tokens: bound on a sample's text tokens (image slots not counted); longer texts are cut and counted.
        templates: prompt templates per task (``caption``, ``vqa``), e.g. ``{"vqa": "Question: {question} Answer:"}``.
        pin_memory: page-locked host batches for faster copies to the GPU.
        predict_prompts: text-to-image prompts for ``lightning predict``: a list, or a file with one prompt per line.
        pack_length: pack each training batch into rows of up to this many LLM tokens; None keeps one sample per row.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 256,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        samples_per_epoch: int = 100_000,
        max_text_tokens: int = 128,
        templates: dict[str, str] | None = None,
        pin_memory: bool = True,
        predict_prompts: str | list[str] | None = None,
        pack_length: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_urls = expand_shards(train_shards) if train_shards else None
        self.val_urls = expand_shards(val_shards) if val_shards else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.max_text_tokens = max_text_tokens
        self.templates = templates
        self.pin_memory = pin_memory
        self.predict_prompts = predict_prompts
        if pack_length is not None and pack_length < 1:
            raise ValueError(f"data.pack_length must be a positive number of tokens (or null), got {pack_length}")
        self.pack_length = pack_length
        self.builder: SequenceBuilder | None = None

    def attach(self, text_tokenizer: PreTrainedTokenizerBase, num_image_tokens: int,
               layout: Layout = "image_first") -> None:
        """Sets what tokenization needs; called from :meth:`setup` with the trainer's model when not called."""
        if self.pack_length and layout != "image_first":
            raise ValueError(f"data.pack_length packs image_first sequences (understanding); this model reads "
                             f"{layout} sequences: set data.pack_length: null")
        self.builder = SequenceBuilder(text_tokenizer, num_image_tokens, self.templates, self.max_text_tokens,
                                       layout)

    def setup(self, stage: str) -> None:
        if self.builder is None:
            model = self.trainer.lightning_module if self.trainer else None
            if model is None or not hasattr(model, "text_tokenizer"):
                raise RuntimeError("ImageTextDataModule needs attach(text_tokenizer, num_image_tokens) or a model "
                                   "with `text_tokenizer` and `num_image_tokens(image_size)`")
            self.attach(model.text_tokenizer, model.num_image_tokens(self.image_size),
                        getattr(model, "sequence_layout", "image_first"))

    def batches_per_worker(self) -> int:
        """Per-rank batches, spread over the workers (rounded up so every rank gets the same number)."""
        per_rank = max(1, self.samples_per_epoch // (self.batch_size * self.rank_and_world_size()[1]))
        return math.ceil(per_rank / max(1, self.num_workers))

    def pipeline(self, train: bool) -> wds.DataPipeline:
        """Decoded samples batched by :class:`Collator` (packed when training with ``pack_length``)."""
        stages, skips = self.sample_stages(train)
        collate = Collator(self.builder.tokenizer.pad_token_id, skips, self.builder.num_image_tokens,
                           self.pack_length if train else None)
        return wds.DataPipeline(*stages, wds.batched(self.batch_size, collation_fn=collate, partial=not train))

    def sample_stages(self, train: bool) -> tuple[list, SkipCounter]:
        """The pipeline stages up to decoded samples (image array + token sequence), and their skip counter."""
        skips = SkipCounter()
        decoder = SampleDecoder(ImageTransform(self.image_size, random_crop=train), self.builder, skips)
        if train:
            start_step = self.trainer.global_step if self.trainer else 0
            stages = [ResampledShardStream(self.train_urls, self.seed, start_step),
                      tar_to_samples(handler=skips.handler),
                      SeededShuffle(self.shuffle_buffer, self.shuffle_buffer // 2, self.seed, start_step),
                      wds.map(decoder)]
        else:
            rank, world_size = self.rank_and_world_size()
            stages = [OrderedShardStream(self.val_urls), tar_to_samples(handler=skips.handler),
                      EvenSplit(decoder, self.builder, self.image_size, rank, world_size)]
        return stages, skips

    def rank_and_world_size(self) -> tuple[int, int]:
        """The trainer's global rank and world size; outside a trainer, the environment's."""
        if self.trainer:
            return self.trainer.global_rank, self.trainer.world_size
        rank, world_size, _, _ = pytorch_worker_info()
        return rank, world_size

    def loader(self, dataset: wds.DataPipeline) -> DataLoader:
        """A loader whose workers ignore stop signals (the rank saves and then ends them; data/loader_workers.py)."""
        end_workers_at_exit()
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=ignore_stop_signals,
        )

    def on_after_batch_transfer(self, batch: ETTBatch | PromptBatch, dataloader_idx: int) -> ETTBatch | PromptBatch:
        """uint8 images become [-1, 1] floats here, on the device, rather than in the workers."""
        return batch.normalized() if isinstance(batch, ETTBatch) else batch

    def train_dataloader(self) -> DataLoader:
        if self.train_urls is None:
            raise ValueError("data.train_shards is not set")
        per_worker = self.batches_per_worker()
        dataset = self.pipeline(train=True).with_epoch(per_worker).with_length(
            per_worker * max(1, self.num_workers), silent=True)
        return self.loader(dataset)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader(self.pipeline(train=False)) if self.val_urls else []

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """Predicts over ``predict_prompts`` when given (image generation), else over the validation shards."""
        if self.predict_prompts is None:
            return self.val_dataloader()
        if self.builder.layout != "text_first":
            raise ValueError("data.predict_prompts are prompts for image generation, but the model reads images "
                             "first (sequence_layout image_first); remove predict_prompts to predict over val_shards")
        prompts = list(enumerate(read_prompts(self.predict_prompts)))
        return DataLoader(prompts, batch_size=self.batch_size, collate_fn=PromptCollator(self.builder))
