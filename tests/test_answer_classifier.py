"""docs/subclassing.md's second example, kept honest: image classification by a text answer, in one subclass."""

import lightning as L
import torch
import torch.nn.functional as F

from ett_lightning import ETTLoss, ETTModule, ImageTextDataModule, LanguageModel, MLPProjector
from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from tests.conftest import IMAGE_SIZE, TINY_LLM, tiny_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]


class AnswerClassifier(ETTModule):
    """Trains on VQA answers as usual; predicts the class whose name is the most likely answer, so every
    prediction is a valid class, and logs ``val/class_acc`` on samples whose answer is a class."""

    def __init__(self, *args, classes: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.classes = classes

    def class_scores(self, batch) -> torch.Tensor:
        """[B, C] summed log-likelihood of each class name (and EOS) after the batch's image and question."""
        tokenizer, lm = self.text_tokenizer, self.language_model
        names = [tokenizer.encode(" " + c, add_special_tokens=False) + [tokenizer.eos_token_id] for c in self.classes]
        image_embeds = self.projector(self.encode_images(batch.images).embeddings)
        scores = torch.zeros(len(batch), len(names), device=self.device)
        for row, start in enumerate(batch.target_starts.tolist()):
            prompt = batch.input_ids[row, :start].tolist()
            width = start + max(map(len, names))
            ids = torch.full((len(names), width), tokenizer.pad_token_id, device=self.device)
            labels = torch.full_like(ids, -100)
            for c, name in enumerate(names):
                ids[c, : start + len(name)] = torch.tensor(prompt + name)
                labels[c, start: start + len(name)] = torch.tensor(name)
            slots = batch.image_slots[row, :1].new_zeros(ids.shape)
            slots[:, : start] = batch.image_slots[row, :start]
            logits = lm(ids, (ids != tokenizer.pad_token_id) | slots, image_embeds[row].expand(len(names), -1, -1),
                        slots).logits
            log_probs = -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
            scores[row] = log_probs.sum(dim=1)
        return scores

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)
        targets = torch.tensor([self.classes.index(a[0]) if a[0] in self.classes else -1 for a in batch.answers],
                               device=self.device)
        known = targets >= 0
        if known.any():
            correct = self.class_scores(batch).argmax(dim=1)[known] == targets[known]
            self.log("val/class_acc", correct.float().mean(), batch_size=int(known.sum()))
        return loss


def build() -> AnswerClassifier:
    torch.manual_seed(0)
    return AnswerClassifier(tiny_tokenizer(), MLPProjector(8, 32), LanguageModel(config=TINY_LLM),
                            loss=ETTLoss(perceptual_weight=0.0), stage="posttrain", warmup_steps=1, classes=COLOURS)


def test_the_true_class_score_is_minus_the_summed_answer_loss():
    module = build().eval()
    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(IMAGE_SIZE))
    image = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8).numpy()
    sample = {"image": image, "sequence": builder.build("vqa", {"question": "What colour is the text?"}, "blue"),
              "answers": ["blue"], "task": "vqa", "key": "0"}
    batch = Collator(module.text_tokenizer.pad_token_id, SkipCounter(), builder.num_image_tokens)([sample]).normalized()
    with torch.no_grad():
        scores = module.class_scores(batch)
        mean_loss = module.compute_losses(batch)[0]
    answer_tokens = int((batch.labels != -100).sum())
    assert scores.shape == (1, len(COLOURS))
    assert torch.allclose(scores[0, COLOURS.index("blue")], -mean_loss * answer_tokens, atol=1e-4)


def test_the_classifier_trains_and_reports_accuracy(synthetic_shards, tmp_path):
    module = build()
    data = ImageTextDataModule(train_shards=str(synthetic_shards / "vqa" / "train-*.tar"),
                               val_shards=str(synthetic_shards / "vqa" / "val-*.tar"), batch_size=4, num_workers=0,
                               image_size=IMAGE_SIZE, shuffle_buffer=8, samples_per_epoch=12, pin_memory=False)
    before = module.projector[0].weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert not torch.equal(before, module.projector[0].weight)
    assert 0.0 <= float(trainer.callback_metrics["val/class_acc"]) <= 1.0
