import json

import lightning as L
import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from ett_lightning.callbacks import MetricsJSON, ReconstructionGrid, ReconstructionMetrics, VQAEvaluation
from ett_lightning.callbacks.reconstruction import build_fid
from ett_lightning.data import ImageTextDataModule
from tests.conftest import IMAGE_SIZE, make_batch, tiny_module


class TinyFeatures(nn.Module):
    """A fixed random projection of 4x4-pooled pixels: a small stand-in for Inception in tests."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16, self.num_features)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        return self.proj(nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1))


def direct_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_equals_direct_computation_on_the_same_features():
    extractor = TinyFeatures()
    fid = build_fid(None, extractor)
    generator = torch.Generator().manual_seed(1)
    real, fake = torch.rand(40, 3, 16, 16, generator=generator), torch.rand(40, 3, 16, 16, generator=generator) * 0.8
    fid.update(real, real=True)
    fid.update(fake, real=False)
    with torch.no_grad():
        expected = direct_fid(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert fid.compute().item() == pytest.approx(expected, rel=1e-3)


def test_missing_fid_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="FID Inception weights not found"):
        build_fid(str(tmp_path / "inception.pth"), None)


def test_psnr_on_known_images():
    callback = ReconstructionMetrics(fid=False)
    callback.setup(None, tiny_module(), "validate")
    images = torch.full((2, 3, 8, 8), 0.5)
    callback.update(images, images + 0.1)
    assert callback.metrics["psnr"].compute().item() == pytest.approx(20.0, rel=1e-4)
    assert callback.metrics["ssim"].compute().item() <= 1.0


def test_validation_writes_metrics_json_pictures_and_vqa_accuracy(tmp_path, synthetic_shards):
    module = tiny_module("posttrain")
    data = ImageTextDataModule(val_shards=str(synthetic_shards / "vqa" / "val-*.tar"), batch_size=8,
                               num_workers=0, image_size=IMAGE_SIZE, pin_memory=False)
    callbacks = [ReconstructionMetrics(fid_feature_extractor=TinyFeatures()), VQAEvaluation(max_new_tokens=4),
                 ReconstructionGrid(num_images=4), MetricsJSON()]
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, data)
    run = tmp_path / "lightning_logs" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["val/vqa_acc"] <= 1.0
    assert metrics["val/psnr"] > 0 and np.isfinite(metrics["val/rfid"]) and "val/caption" in metrics
    assert 0 < metrics["val/epoch_codebook_usage"] <= 1 and metrics["val/epoch_codebook_perplexity"] >= 1
    pictures = list((run / "reconstructions").glob("step_*.png"))
    assert len(pictures) == 1


class ScriptedAnswers(L.LightningModule):
    """Answers fixed in advance; records what is logged."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers, self.logged = answers, {}

    def generate(self, batch, max_new_tokens):
        return self.answers

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def test_vqa_accuracy_is_also_reported_per_answer_type():
    module = ScriptedAnswers(["yes", "cat", "red", "no", "a caption"])
    batch = make_batch(tiny_module(), batch_size=5)
    batch.tasks = ["vqa"] * 4 + ["caption"]
    batch.answers = [["yes"], ["dog"], ["red"], ["no"], ["a caption"]]
    batch.answer_types = ["yes/no", "word", "colour", "yes/no", ""]
    callback = VQAEvaluation(answer_types=["yes/no", "word"])
    callback.setup(None, module, "validate")
    callback.on_validation_batch_end(None, module, None, batch, 0)
    callback.on_validation_epoch_end(None, module)
    assert module.logged == {"val/vqa_acc": 0.75, "val/vqa_acc_yes_no": 1.0, "val/vqa_acc_word": 0.0}


def test_synthetic_vqa_samples_carry_their_answer_type(synthetic_shards):
    data = ImageTextDataModule(val_shards=str(synthetic_shards / "vqa" / "val-*.tar"), batch_size=8,
                               num_workers=0, image_size=IMAGE_SIZE, pin_memory=False)
    data.attach(tiny_module().text_tokenizer, tiny_module().num_image_tokens(IMAGE_SIZE))
    batch = next(iter(data.val_dataloader()))
    assert len(batch.answer_types) == len(batch) and set(batch.answer_types) <= {"word", "colour", "yes/no"}
    assert all((t == "yes/no") == (a[0] in ("yes", "no")) for t, a in zip(batch.answer_types, batch.answers))


class LooksAtImages(ScriptedAnswers):
    """Answers correctly only when the image is not blank."""

    def generate(self, batch, max_new_tokens):
        seeing = batch.images.flatten(1).abs().amax(dim=1) > 0
        return [a if s else "no idea" for a, s in zip(self.answers, seeing.tolist())]


def test_blind_accuracy_answers_with_grey_images():
    module = LooksAtImages(["yes", "dog", "red", "no"])
    batch = make_batch(tiny_module(), batch_size=4)
    batch.tasks, batch.answers = ["vqa"] * 4, [["yes"], ["dog"], ["no idea"], ["no"]]
    batch.answer_types = ["yes/no", "word", "colour", "yes/no"]
    callback = VQAEvaluation(blind=True, answer_types=["yes/no", "colour"])
    callback.setup(None, module, "validate")
    callback.on_validation_batch_end(None, module, None, batch, 0)
    callback.on_validation_epoch_end(None, module)
    assert module.logged == {"val/vqa_acc": 0.75, "val/vqa_acc_yes_no": 1.0, "val/vqa_acc_colour": 0.0,
                             "val/vqa_acc_blind": 0.25, "val/vqa_acc_blind_yes_no": 0.0,
                             "val/vqa_acc_blind_colour": 1.0}
    assert batch.images.abs().amax() > 0, "the batch itself is left as it was"
