"""The subclassing example of docs/subclassing.md, kept honest: it must train and change the loss."""

import torch
import torch.nn.functional as F

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector
from tests.conftest import TINY_LLM, make_batch, tiny_tokenizer


class LabelSmoothedETT(ETTModule):
    def __init__(self, *args, smoothing: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.smoothing = smoothing

    def caption_loss(self, batch, image_embeds):
        logits = self.language_model(batch.input_ids, batch.attention_mask, image_embeds, batch.image_slots).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),
                               ignore_index=-100, label_smoothing=self.smoothing)


def build(smoothing: float) -> LabelSmoothedETT:
    torch.manual_seed(0)
    return LabelSmoothedETT(tiny_tokenizer(), MLPProjector(8, 32), LanguageModel(config=TINY_LLM),
                            loss=ETTLoss(perceptual_weight=0.0), stage="align", smoothing=smoothing)


def test_zero_smoothing_equals_base_caption_loss_and_smoothing_changes_it():
    plain, smoothed = build(0.0), build(0.2)
    batch = make_batch(plain)
    base, _, _ = ETTModule.compute_losses(plain, batch)
    assert torch.allclose(plain.compute_losses(batch)[0], base, atol=1e-6)
    assert not torch.allclose(smoothed.compute_losses(batch)[0], base)
    total, parts, _ = smoothed.compute_losses(batch)
    total.backward()
    assert smoothed.projector[0].weight.grad.abs().sum() > 0 and set(parts) == {"caption", "total"}
