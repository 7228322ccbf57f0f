"""Reconstruction-only tokenizer training: how public VQ tokenizers are made, and the demo's first step."""

from __future__ import annotations

from functools import cached_property

import lightning as L
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.losses import ETTLoss
from ett_lightning.models import load_text_tokenizer
from ett_lightning.tokenizer import VisionTokenizer
from ett_lightning.training.clipping import clip_by_player
from ett_lightning.training.component_weights import load_component_weights
from ett_lightning.training.optimizer import adamw_with_schedule, discriminator_groups, parameter_groups
from ett_lightning.training.step_logging import evaluation_rows, log_split


class TokenizerPretraining(L.LightningModule):
    """Trains a :class:`VisionTokenizer` on the VQ part of :class:`ETTLoss` (reconstruction, LPIPS, quantizer and,
    with ``adversarial_weight`` > 0, GAN terms).

    No LLM is involved; captions in the batch are ignored. Its checkpoint keeps the weights under ``tokenizer.``,
    so ``ETTModule(init_from=...)`` starts stage 1 from it. ``init_from`` loads the tokenizer of any
    ett_lightning checkpoint (this task's or an ``ETTModule`` stage's), e.g. to validate a tuned tokenizer's
    reconstruction with ``lightning validate``.

    Args:
        tokenizer: the vision tokenizer to train.
        loss: the VQ loss terms and weights (the caption term is unused).
        learning_rate: AdamW learning rate of the tokenizer.
        betas: AdamW betas.
        weight_decay: AdamW weight decay of matrices and convolutions.
        warmup_steps: linear warmup steps before the cosine decay.
        min_lr_ratio: the cosine schedule's floor, as a fraction of the learning rate.
        init_from: checkpoint whose tokenizer weights start this run.
    """

    def __init__(
        self,
        tokenizer: VisionTokenizer,
        loss: ETTLoss | None = None,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "loss", "init_from"])
        self.tokenizer = tokenizer
        self.loss = loss if loss is not None else ETTLoss()
        if init_from is not None:
            load_component_weights(self, init_from, ("tokenizer",))

    @cached_property
    def text_tokenizer(self) -> PreTrainedTokenizerBase:
        """The datamodule tokenizes captions anyway; a file-free byte-level tokenizer keeps that cheap."""
        return load_text_tokenizer(None)

    def num_image_tokens(self, image_size: int) -> int:
        return self.tokenizer.num_tokens(image_size)

    def step(self, batch: ETTBatch, split: str, weight: int) -> Tensor:
        """The VQ loss of ``batch``, logged under ``split`` with ``weight`` as the batch size of the means."""
        reconstructions, encoded = self.tokenizer(batch.images)
        vq, parts = self.loss.vq_loss(batch.images, reconstructions, encoded.quant_losses,
                                      self.loss.last_layer_of(self.tokenizer), self.global_step)
        log_split(self, split, {**parts, **encoded.stats}, weight)
        return vq + parts.get("discriminator", 0.0)

    def training_step(self, batch: ETTBatch, batch_idx: int) -> Tensor:
        return self.step(batch, "train", len(batch))

    def validation_step(self, batch: ETTBatch, batch_idx: int) -> Tensor:
        real, weight = evaluation_rows(batch)
        return self.step(real, "val", weight)

    def configure_model(self) -> None:
        """Nothing to build: ``FSDP2Strategy`` shards the module itself, and Lightning's model-parallel setup only
        accepts modules that define this hook."""

    def configure_optimizers(self) -> dict:
        groups = parameter_groups("tokenizer", self.tokenizer, self.hparams.learning_rate, self.hparams.weight_decay)
        groups += discriminator_groups(self.loss)
        total = int(self.trainer.estimated_stepping_batches)
        return adamw_with_schedule(groups, self.hparams.betas, self.hparams.warmup_steps, total,
                                   self.hparams.min_lr_ratio, self.device)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_by_player(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
