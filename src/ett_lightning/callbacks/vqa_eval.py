"""VQA accuracy of the model on validation VQA and conversation samples, by greedy generation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from ett_lightning.callbacks.metrics_json import write_json_atomically
from ett_lightning.callbacks.run_dir import run_dir
from ett_lightning.callbacks.synced_metrics import gather_objects, log_synced
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.distributed.fsdp2 import is_sharded
from ett_lightning.metrics import VQAAccuracy
from ett_lightning.metrics.vqa import Normalization

ANSWERED_TASKS = ("vqa", "conversation")


class VQAEvaluation(L.Callback):
    """Generates answers for the VQA samples of each validation batch and logs ``val/vqa_acc``.

    Conversation samples count as questions too: the prompt is the chat template up to the last assistant turn,
    with the generation prompt, and the reference is that turn (one reference: exact match after normalisation).

    ``answer_types`` (VQAv2's ``answer_type`` field of the samples, e.g. ``["yes/no", "number", "other"]``) adds
    ``val/vqa_acc_<type>`` for each listed type ("/" becomes "_"); they are listed up front so every DDP rank
    holds the same metrics. ``max_batches`` bounds the cost (generation is sequential in the new tokens); the
    metrics sync across ranks.

    ``blind`` also answers every question with the image replaced by a uniform grey one and logs
    ``val/vqa_acc_blind`` (and ``val/vqa_acc_blind_<type>``): what the answer priors alone score. A
    ``val/vqa_acc`` no higher than it means the model is not using the image.

    ``normalization`` is :class:`VQAAccuracy`'s: ``"always"`` normalises predictions and references as lmms-eval
    and published numbers do, ``"official"`` as the original vqaEval.py (only where the references disagree).

    After each validation the answers of all ranks are written by rank 0 as ``<run dir>/<results_file>``, in the
    official VQA results format ``[{"question_id": ..., "answer": ...}]`` (the sample's json ``question_id``, else
    its key), so they can be submitted to the evaluation server or rescored by other tools.

    Args:
        max_new_tokens: longest generated answer, in tokens.
        max_batches: validation batches answered (None: all).
        answer_types: VQAv2 answer types to report separately, e.g. ``["yes/no", "number", "other"]``.
        blind: also answer with a grey image and log ``val/vqa_acc_blind``.
        results_file: answers in the official results format, in the run directory (None: not written).
        normalization: ``always`` (lmms-eval, published numbers) or ``official`` (vqaEval.py).
    """

    def __init__(self, max_new_tokens: int = 16, max_batches: int | None = None,
                 answer_types: list[str] | None = None, blind: bool = False,
                 results_file: str | None = "vqa_results.json", normalization: Normalization = "always") -> None:
        super().__init__()
        self.max_new_tokens = max_new_tokens
        self.max_batches = max_batches
        self.kinds = [kind.replace("/", "_") for kind in answer_types or []]
        prefixes = ["vqa_acc", "vqa_acc_blind"] if blind else ["vqa_acc"]
        names = [f"{prefix}{suffix}" for prefix in prefixes for suffix in ["", *(f"_{k}" for k in self.kinds)]]
        self.metrics = nn.ModuleDict({name: VQAAccuracy(normalization) for name in names})
        self.blind = blind
        self.results_file = results_file
        self.results: list[dict[str, Any]] = []
        self.directory: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.metrics.to(pl_module.device)
        self.directory = run_dir(trainer) if self.results_file else None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: ETTBatch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        real = batch.without_padding()
        rows = [i for i, task in enumerate(real.tasks) if task in ANSWERED_TASKS]
        if not rows:
            if is_sharded(pl_module):  # generation is a collective: answer the padded batch and drop the answers
                for _ in range(2 if self.blind else 1):
                    pl_module.generate(batch, self.max_new_tokens)
            return
        batch = real
        answers = pl_module.generate(batch, self.max_new_tokens)
        self.score("vqa_acc", answers, batch, rows)
        self.results += [{"question_id": question_id(batch, i), "answer": answers[i]} for i in rows]
        if self.blind:
            grey = replace(batch, images=torch.zeros_like(batch.images))
            self.score("vqa_acc_blind", pl_module.generate(grey, self.max_new_tokens), batch, rows)

    def score(self, prefix: str, answers: list[str], batch: ETTBatch, rows: list[int]) -> None:
        """Updates ``prefix`` with every VQA row and ``prefix_<type>`` with the rows of that answer type."""
        self.metrics[prefix].update([answers[i] for i in rows], [batch.answers[i] for i in rows])
        for i in rows:
            kind = batch.answer_types[i].replace("/", "_") if batch.answer_types else ""
            if kind in self.kinds:
                self.metrics[f"{prefix}_{kind}"].update([answers[i]], [batch.answers[i]])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        log_synced(trainer, pl_module, self.metrics)
        results, self.results = gather_objects(self.results), []
        if self.directory is not None and trainer.is_global_zero and results and not trainer.sanity_checking:
            write_json_atomically(self.directory / self.results_file, results)


def question_id(batch: ETTBatch, row: int) -> Any:
    """The sample's json ``question_id``, or its key when it has none."""
    qid = batch.question_ids[row] if batch.question_ids else None
    return batch.keys[row] if qid is None else qid
