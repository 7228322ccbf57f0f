"""VQA accuracy of the model on validation VQA samples, by greedy generation."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import torch
from torch import nn

from ett_lightning.data.batch import ETTBatch
from ett_lightning.metrics import VQAAccuracy


class VQAEvaluation(L.Callback):
    """Generates answers for the VQA samples of each validation batch and logs ``val/vqa_acc``.

    ``answer_types`` (VQAv2's ``answer_type`` field of the samples, e.g. ``["yes/no", "number", "other"]``) adds
    ``val/vqa_acc_<type>`` for each listed type ("/" becomes "_"); they are listed up front so every DDP rank
    holds the same metrics. ``max_batches`` bounds the cost (generation is sequential in the new tokens); the
    metrics sync across ranks.

    ``blind`` also answers every question with the image replaced by a uniform grey one and logs
    ``val/vqa_acc_blind``: what the answer priors alone score. A ``val/vqa_acc`` no higher than it means the
    model is not using the image.
    """

    def __init__(self, max_new_tokens: int = 16, max_batches: int | None = None,
                 answer_types: list[str] | None = None, blind: bool = False) -> None:
        super().__init__()
        self.max_new_tokens = max_new_tokens
        self.max_batches = max_batches
        self.accuracy = VQAAccuracy()
        self.by_type = nn.ModuleDict({kind.replace("/", "_"): VQAAccuracy() for kind in answer_types or []})
        self.blind_accuracy = VQAAccuracy() if blind else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.accuracy.to(pl_module.device)
        self.by_type.to(pl_module.device)
        if self.blind_accuracy is not None:
            self.blind_accuracy.to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        rows = [i for i, task in enumerate(batch.tasks) if task == "vqa"]
        if not rows:
            return
        answers = pl_module.generate(batch, self.max_new_tokens)
        self.accuracy.update([answers[i] for i in rows], [batch.answers[i] for i in rows])
        for i in rows:
            kind = batch.answer_types[i].replace("/", "_") if batch.answer_types else ""
            if kind in self.by_type:
                self.by_type[kind].update([answers[i]], [batch.answers[i]])
        if self.blind_accuracy is not None:
            grey = replace(batch, images=torch.zeros_like(batch.images))
            blind_answers = pl_module.generate(grey, self.max_new_tokens)
            self.blind_accuracy.update([blind_answers[i] for i in rows], [batch.answers[i] for i in rows])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.accuracy.update_count:
            pl_module.log("val/vqa_acc", self.accuracy.compute())
        for kind, metric in self.by_type.items():
            pl_module.log(f"val/vqa_acc_{kind}", metric.compute())
            metric.reset()
        self.accuracy.reset()
        if self.blind_accuracy is not None and self.blind_accuracy.update_count:
            pl_module.log("val/vqa_acc_blind", self.blind_accuracy.compute())
            self.blind_accuracy.reset()
