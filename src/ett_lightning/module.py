"""ETTModule: tokenizer + projector + LLM trained end to end, stage by stage."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from ett_lightning.checkpoints.export import load_export
from ett_lightning.data.batching.batch import ETTBatch
from ett_lightning.distributed.fsdp2 import is_sharded
from ett_lightning.losses import ETTLoss
from ett_lightning.models import LanguageModel, MLPProjector
from ett_lightning.models.generation import Decoding, generate_text
from ett_lightning.tokenizer import TokenizerOutput, VisionTokenizer
from ett_lightning.training.clipping import clip_by_player
from ett_lightning.training.component_weights import load_component_weights
from ett_lightning.training.optimizer import adamw_with_schedule, check_rate_names, module_groups
from ett_lightning.training.step_logging import evaluation_rows, log_split, writes_step_logs

Stage = Literal["align", "ett", "posttrain"]
COMPONENTS = ("tokenizer", "projector", "language_model")
STAGE_TRAINABLE: dict[str, frozenset[str]] = {
    "align": frozenset({"projector"}),
    "ett": frozenset(COMPONENTS),
    "posttrain": frozenset({"projector", "language_model"}),
}
DEFAULT_LEARNING_RATES = {"tokenizer": 1e-5, "projector": 1e-3, "language_model": 2e-5}


class ETTModule(L.LightningModule):
    """Owns the three components and trains those its ``stage`` names.

    - ``align``: projector only, caption loss only (paper stage 1);
    - ``ett``: everything, caption + alpha x VQ loss (stage 2, the tokenizer learns from the caption loss);
    - ``posttrain``: tokenizer frozen, projector + LLM on the task loss (stage 3).

    ``init_from`` starts from the component weights of an earlier stage's checkpoint (a fresh optimizer and
    schedule, unlike ``ckpt_path``, which resumes a run). ``trainable`` overrides the stage per component
    (e.g. ``{"language_model": false}``). Frozen components are in eval mode, have ``requires_grad=False`` and
    get no optimizer state. ``torch_compile`` (True, or ``torch.compile`` options such as
    ``{"mode": "max-autotune"}``) compiles the LLM and the tokenizer's encoder and decoder in place when the
    trainer sets the model up, so checkpoint keys do not change. Subclasses override the small hooks
    :meth:`encode_images`, :meth:`caption_loss` and :meth:`compute_losses`, not the whole step. A task that adds
    a trained part (e.g. an output head) names it in ``component_names``, ``stage_trainable`` and
    ``default_learning_rates``, and sets it after ``super().__init__`` (see :class:`TextToImage`).

    Args:
        tokenizer: the vision tokenizer (encoder, quantizer, decoder) whose codebook embeddings the LLM reads.
        projector: maps codebook embeddings to the LLM's hidden size.
        language_model: the Hugging Face causal LM and its text tokenizer.
        loss: weights of the caption, reconstruction, perceptual, quantizer and adversarial terms (default ETTLoss()).
        stage: ``align`` (stage 1), ``ett`` (stage 2) or ``posttrain`` (stage 3): which components train.
        trainable: per-component overrides of the stage, e.g. ``{"language_model": false}``.
        learning_rates: per-component learning rates; unnamed components keep the defaults (tokenizer 1e-5, projector
            1e-3, language_model 2e-5). ``codebook`` gives the tokenizer's quantizer a rate of its own (default: the
            tokenizer's).
        weight_decay: AdamW weight decay of matrices and convolutions (none on biases, norms, codebooks, positions).
        betas: AdamW betas.
        warmup_steps: linear warmup steps before the cosine decay.
        min_lr_ratio: the cosine schedule's floor, as a fraction of each learning rate.
        init_from: checkpoint whose component weights start this run (a new stage; ``--ckpt_path`` resumes a run).
        torch_compile: compile the LLM and the tokenizer's encoder and decoder: True, or ``torch.compile`` options.
    """

    component_names: tuple[str, ...] = COMPONENTS
    stage_trainable: dict[str, frozenset[str]] = STAGE_TRAINABLE
    default_learning_rates: dict[str, float] = DEFAULT_LEARNING_RATES
    sequence_layout: str = "image_first"

    def __init__(
        self,
        tokenizer: VisionTokenizer,
        projector: MLPProjector,
        language_model: LanguageModel,
        loss: ETTLoss | None = None,
        stage: Stage = "ett",
        trainable: dict[str, bool] | None = None,
        learning_rates: dict[str, float] | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        init_from: str | None = None,
        torch_compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        self._save_config()
        self.tokenizer = tokenizer
        self.projector = projector
        self.language_model = language_model
        check_dimensions(tokenizer, projector, language_model)
        self.stage = stage
        self.trainable = resolve_trainable(stage, trainable, self.stage_trainable, self.component_names)
        self.loss = loss if loss is not None else ETTLoss()
        check_rate_names(learning_rates or {}, {*self.default_learning_rates, *self.component_names, "codebook"})
        self.learning_rates = {**self.default_learning_rates, **(learning_rates or {})}
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.skipped_samples = 0
        self.truncated_samples = 0
        self.torch_compile = torch_compile
        if init_from is not None:
            self.load_components(init_from)
        self.freeze_components()

    def _save_config(self) -> None:
        """Records the init arguments so ``load_from_checkpoint`` can rebuild the module.

        Under LightningCLI these are the nested ``class_path`` configs of every component. Components passed as
        Python objects are not recorded (their weights are in the state dict): pass them to
        ``load_from_checkpoint`` again. ``init_from`` is not recorded: a checkpoint already holds those weights.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        for key in [k for k, v in self.hparams.items() if isinstance(v, nn.Module) or k == "init_from"]:
            del self.hparams[key]

    @classmethod
    def from_export(cls, directory: str, trust_remote_code: bool = False, **kwargs: Any) -> ETTModule:
        """The module of an ``ett export`` directory (:func:`~ett_lightning.checkpoints.export.load_export`);
        ``kwargs`` (``stage``, ``loss``, learning rates, ...) set the training configuration, as in ``__init__``."""
        parts = load_export(directory, trust_remote_code)
        return cls(parts["tokenizer"], parts["projector"], parts["language_model"],
                   **{"stage": parts["stage"] or "ett", **kwargs})

    def load_components(self, path: str) -> None:
        """Loads the components a checkpoint holds (each one strictly); loss modules are skipped. A tokenizer-only
        checkpoint (``TokenizerPretraining``) loads just the tokenizer.
        """
        load_component_weights(self, path, self.components())

    def configure_model(self) -> None:
        """Compiles the heavy parts with ``torch_compile``'s options (``nn.Module.compile``: in place)."""
        if self.torch_compile is False:
            return
        options = {} if self.torch_compile is True else dict(self.torch_compile)
        for part in self.compiled_parts():
            part.compile(**options)

    def compiled_parts(self) -> tuple[nn.Module, ...]:
        """What ``torch_compile`` compiles: the modules this task's step calls, not their parents."""
        return self.language_model.model, self.tokenizer.encoder, self.tokenizer.decoder

    @property
    def text_tokenizer(self):
        """The LLM's text tokenizer (with image markers); the datamodule tokenizes with it."""
        return self.language_model.tokenizer

    def num_image_tokens(self, image_size: int) -> int:
        return self.tokenizer.num_tokens(image_size)

    def is_trainable(self, component: str) -> bool:
        return component in self.trainable

    def components(self) -> tuple[str, ...]:
        """The names in ``component_names`` this instance has (a task's optional part may be None)."""
        return tuple(name for name in self.component_names if getattr(self, name, None) is not None)

    def freeze_components(self) -> None:
        """Components per stage; the discriminator trains only beside the tokenizer."""
        for name in self.components():
            getattr(self, name).requires_grad_(self.is_trainable(name))
        if self.loss.adversarial is not None and not self.is_trainable("tokenizer"):
            self.loss.adversarial.requires_grad_(False)

    def train(self, mode: bool = True) -> ETTModule:
        """Keeps frozen components in eval mode (no dropout, no norm statistics updates) while training."""
        super().train(mode)
        for name in self.components():
            if not self.is_trainable(name):
                getattr(self, name).eval()
        return self

    def on_train_start(self) -> None:
        """Lightning 2.6 starts (and resumes) ``fit`` in the modes modules were built in: frozen parts to eval."""
        self.train()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()  # Lightning restores the modes it saw; frozen parts back to eval
        self.train()

    def encode_images(self, images: Tensor) -> TokenizerOutput:
        """Tokenizer forward; without gradient bookkeeping when the tokenizer is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.is_trainable("tokenizer")):
            return self.tokenizer.encode(images)

    def caption_loss(self, batch: ETTBatch, image_embeds: Tensor) -> Tensor:
        """Next-token loss on the target text, with the projected image tokens spliced in.

        No attention mask: batches are right padded and pads carry no labels, so the loss equals the masked one
        while the LLM uses causal attention kernels (and Hugging Face does not read the mask back to the host).
        A packed batch's ``position_ids`` keep each sample's attention within the sample.
        """
        output = self.language_model(batch.input_ids, None, image_embeds, batch.image_slots, labels=batch.labels,
                                     position_ids=batch.position_ids, packed_segments=batch.packed_segments)
        return output.loss

    def compute_losses(self, batch: ETTBatch) -> tuple[Tensor, dict[str, Tensor], TokenizerOutput]:
        """Caption loss always; the VQ loss (decoder, LPIPS, quantizer terms) only while the tokenizer trains."""
        encoded = self.encode_images(batch.images)
        caption = self.caption_loss(batch, self.projector(encoded.embeddings))
        if not self.is_trainable("tokenizer"):
            total, parts = self.loss(caption)
            return total, parts, encoded
        reconstructions = self.tokenizer.decode(encoded.embeddings)
        total, parts = self.loss(caption, batch.images, reconstructions, encoded.quant_losses,
                                 self.loss.last_layer_of(self.tokenizer), self.global_step)
        return total, parts, encoded

    def training_step(self, batch: ETTBatch, batch_idx: int) -> Tensor:
        total, parts, encoded = self.compute_losses(batch)
        log_split(self, "train", {**parts, **encoded.stats}, len(batch))
        self.skipped_samples += batch.skipped
        self.truncated_samples += batch.truncated
        if writes_step_logs(self):
            counts = {"data/skipped": self.skipped_samples, "data/truncated": self.truncated_samples}
            self.log_dict({name: float(count) for name, count in counts.items()}, on_step=True, batch_size=len(batch))
        return total

    def evaluation_step(self, batch: ETTBatch, split: str) -> Tensor:
        batch, weight = evaluation_rows(batch)
        total, parts, encoded = self.compute_losses(batch)
        log_split(self, split, {**parts, **encoded.stats}, weight)
        return total

    def validation_step(self, batch: ETTBatch, batch_idx: int) -> Tensor:
        return self.evaluation_step(batch, "val")

    def test_step(self, batch: ETTBatch, batch_idx: int) -> Tensor:
        return self.evaluation_step(batch, "test")

    @torch.no_grad()
    def generate(self, batch: ETTBatch, max_new_tokens: int = 16, decoding: Decoding | None = None) -> list[str]:
        """Each sample's continuation of its prompt (image + prompt, the target removed), greedy unless
        ``decoding`` says otherwise, through :func:`~ett_lightning.models.generation.generate_text`. A sharded
        module generates until every rank is done (each forward is a collective)."""
        decoding = decoding or Decoding(max_new_tokens=max_new_tokens)
        image_embeds = self.projector(self.encode_images(batch.images).embeddings)
        return generate_text(self.language_model, image_embeds, batch.input_ids, batch.image_slots,
                             batch.target_starts, decoding, synced_gpus=is_sharded(self))

    def predict_step(self, batch: ETTBatch, batch_idx: int) -> list[dict[str, object]]:
        """Generated text for every sample (the caption or answer the model gives), with its key and references."""
        padded, batch = batch, batch.without_padding()
        if not len(batch) and is_sharded(self):  # generation is a collective: answer the padding, keep nothing
            self.generate(padded)
        predictions = self.generate(batch) if len(batch) else []
        return [{"key": k, "prediction": p, "references": r} for k, p, r in zip(batch.keys, predictions, batch.answers)]

    def configure_optimizers(self) -> dict:
        """AdamW over :func:`module_groups` (one rate per trainable component), warmup + cosine."""
        total_steps = int(self.trainer.estimated_stepping_batches)
        return adamw_with_schedule(module_groups(self), self.betas, self.warmup_steps, total_steps,
                                   self.min_lr_ratio, self.device)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_by_player(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


def resolve_trainable(
    stage: str,
    overrides: dict[str, bool] | None,
    table: dict[str, frozenset[str]] = STAGE_TRAINABLE,
    components: tuple[str, ...] = COMPONENTS,
) -> frozenset[str]:
    """The stage's trainable components (from ``table``) with per-component ``overrides`` applied."""
    if stage not in table:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(table)}")
    trainable = set(table[stage])
    for name, flag in (overrides or {}).items():
        if name not in components:
            raise ValueError(f"trainable has unknown component {name!r}; expected keys from {list(components)}")
        (trainable.add if flag else trainable.discard)(name)
    return frozenset(trainable)


def check_dimensions(tokenizer: VisionTokenizer, projector: MLPProjector, language_model: LanguageModel) -> None:
    """Fails at construction, not at the first step, when the components do not fit together."""
    if projector.in_dim != tokenizer.code_dim:
        raise ValueError(
            f"projector.in_dim={projector.in_dim} but the tokenizer's codes have {tokenizer.code_dim} dims; "
            f"set model.projector.init_args.in_dim: {tokenizer.code_dim}"
        )
    if projector.out_dim != language_model.hidden_size:
        raise ValueError(
            f"projector.out_dim={projector.out_dim} but the LLM hidden size is {language_model.hidden_size}; "
            f"set model.projector.init_args.out_dim: {language_model.hidden_size}"
        )
