import json
import math

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


def test_psnr_and_ssim_per_image_on_8_bit_images_worked_out_by_hand(tmp_path):
    """Two flat images: A is 100/255 reconstructed as 110.4/255 (8-bit: 110), B is 50/255 reconstructed as
    51.6/255 (8-bit: 52). Per image PSNR = 20 log10(255 / |error in levels|); SSIM of flat images is
    (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 x 1)^2, since both variances are 0."""
    callback = ReconstructionMetrics(fid=False)
    callback.setup(single_process_trainer(tmp_path), tiny_module(), "validate")
    images = torch.stack([torch.full((3, 16, 16), 100 / 255), torch.full((3, 16, 16), 50 / 255)])
    reconstructions = torch.stack([torch.full((3, 16, 16), 110.4 / 255), torch.full((3, 16, 16), 51.6 / 255)])
    callback.update(images, reconstructions)
    psnr_a, psnr_b = 20 * math.log10(255 / 10), 20 * math.log10(255 / 2)  # 28.1308 and 42.1102 dB
    assert callback.metrics["psnr"].compute().item() == pytest.approx((psnr_a + psnr_b) / 2, abs=1e-4)
    pooled = 10 * math.log10(255**2 / ((10**2 + 2**2) / 2))  # one MSE over both images: 30.9708 dB
    assert callback.metrics["psnr_pooled"].compute().item() == pytest.approx(pooled, abs=1e-4)

    def flat_ssim(a, b, c1=0.01**2):
        return (2 * a * b + c1) / (a * a + b * b + c1)

    expected_ssim = (flat_ssim(100 / 255, 110 / 255) + flat_ssim(50 / 255, 52 / 255)) / 2
    # torchmetrics computes the variances in float32 (E[x^2] - E[x]^2): 1e-4 from the float64 formula
    assert callback.metrics["ssim"].compute().item() == pytest.approx(expected_ssim, abs=2e-4)


def test_8_bit_rounding_is_to_the_nearest_level():
    from ett_lightning.callbacks.reconstruction import to_8bit

    levels = torch.tensor([0.0, 110.4, 110.5, 110.6, 255.0, 300.0]) / 255
    assert (to_8bit(levels) * 255).round().tolist() == [0, 110, 111, 111, 255, 255]


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
    results = json.loads((run / "vqa_results.json").read_text())
    assert sorted(r["question_id"] for r in results) == list(range(64, 80))  # the synthetic val questions' ids
    assert all(isinstance(r["answer"], str) for r in results)


def single_process_trainer(root) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, default_root_dir=root,
                     enable_progress_bar=False, enable_model_summary=False)


class ScriptedAnswers(L.LightningModule):
    """Answers fixed in advance; records what is logged."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers, self.logged = answers, {}

    def generate(self, batch, max_new_tokens):
        return self.answers

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def test_vqa_accuracy_is_also_reported_per_answer_type(tmp_path):
    module = ScriptedAnswers(["yes", "cat", "red", "no", "a caption"])
    batch = make_batch(tiny_module(), batch_size=5)
    batch.tasks = ["vqa"] * 4 + ["caption"]
    batch.answers = [["yes"], ["dog"], ["red"], ["no"], ["a caption"]]
    batch.answer_types = ["yes/no", "word", "colour", "yes/no", ""]
    callback = VQAEvaluation(answer_types=["yes/no", "word", "number"])
    trainer = single_process_trainer(tmp_path)
    callback.setup(trainer, module, "validate")
    callback.on_validation_batch_end(trainer, module, None, batch, 0)
    callback.on_validation_epoch_end(trainer, module)
    assert module.logged == {"val/vqa_acc": 0.75, "val/vqa_acc_yes_no": 1.0, "val/vqa_acc_word": 0.0}


def test_padding_rows_are_not_scored(tmp_path):
    """Rows that only fill a DDP validation split change no metric: VQA rows and reconstructions alike."""
    module = ScriptedAnswers(["yes", "no"])
    batch = make_batch(tiny_module(), batch_size=3)
    batch.tasks, batch.answers, batch.answer_types = ["vqa"] * 3, [["yes"], ["dog"], ["no"]], [""] * 3
    batch.padding = [False, True, False]
    trainer = single_process_trainer(tmp_path)
    vqa = VQAEvaluation()
    vqa.setup(trainer, module, "validate")
    vqa.on_validation_batch_end(trainer, module, None, batch, 0)
    vqa.on_validation_epoch_end(trainer, module)
    assert module.logged == {"val/vqa_acc": 1.0}

    tiny = tiny_module()
    reconstruction = ReconstructionMetrics(fid=False)
    reconstruction.setup(trainer, tiny, "validate")
    reconstruction.on_validation_batch_end(trainer, tiny, None, batch, 0)
    padded = reconstruction.metrics["psnr"].compute()
    reconstruction.metrics["psnr"].reset()
    reconstruction.on_validation_batch_end(trainer, tiny, None, batch.select([0, 2]), 0)
    assert reconstruction.metrics["psnr"].compute().item() == pytest.approx(padded.item(), rel=1e-6)


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


def test_blind_accuracy_answers_with_grey_images(tmp_path):
    module = LooksAtImages(["yes", "dog", "red", "no"])
    batch = make_batch(tiny_module(), batch_size=4)
    batch.tasks, batch.answers = ["vqa"] * 4, [["yes"], ["dog"], ["no idea"], ["no"]]
    batch.answer_types = ["yes/no", "word", "colour", "yes/no"]
    callback = VQAEvaluation(blind=True, answer_types=["yes/no", "colour"])
    trainer = single_process_trainer(tmp_path)
    callback.setup(trainer, module, "validate")
    callback.on_validation_batch_end(trainer, module, None, batch, 0)
    callback.on_validation_epoch_end(trainer, module)
    assert module.logged == {"val/vqa_acc": 0.75, "val/vqa_acc_yes_no": 1.0, "val/vqa_acc_colour": 0.0,
                             "val/vqa_acc_blind": 0.25, "val/vqa_acc_blind_yes_no": 0.0,
                             "val/vqa_acc_blind_colour": 1.0}
    assert batch.images.abs().amax() > 0, "the batch itself is left as it was"


def test_metrics_json_ignores_the_sanity_check(tmp_path):
    """The sanity check's numbers are no measurement: a run killed after it has no metrics.json (which would make
    its directory look like a finished run's)."""
    callback = MetricsJSON()
    callback.directory = tmp_path

    class Trainer:
        sanity_checking, global_step, current_epoch = True, 0, 0
        callback_metrics = {"val/psnr": torch.tensor(12.0)}

    callback.on_validation_end(Trainer(), None)
    assert not (tmp_path / "metrics.json").exists()
    Trainer.sanity_checking = False
    callback.on_validation_end(Trainer(), None)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"step": 0, "epoch": 0, "val/psnr": 12.0}
