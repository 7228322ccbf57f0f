import pytest
import torch
from lightning.pytorch.loggers import Logger

from ett_lightning.losses import ETTLoss, LPIPSLoss
from tests.conftest import fit, tiny_module
from tests.losses.test_adversarial import small_adversarial


class ConstantPerceptual(torch.nn.Module):
    def forward(self, reconstructions, images):
        return torch.tensor(0.7)


def test_total_equals_weighted_formula():
    loss = ETTLoss(caption_weight=1.5, alpha=0.25, reconstruction_weight=2.0, reconstruction_loss="l2",
                   perceptual_weight=0.5, quantizer_weight=3.0, perceptual=ConstantPerceptual())
    images, recon = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    quant = {"commitment": torch.tensor(0.1), "codebook": torch.tensor(0.2), "quantizer": torch.tensor(0.3)}
    total, parts = loss(torch.tensor(2.0), images, recon, quant)
    expected = 1.5 * 2.0 + 0.25 * (2.0 * 0.25 + 0.5 * 0.7 + 3.0 * 0.3)
    assert total.item() == pytest.approx(expected) and parts["total"].item() == pytest.approx(expected)
    assert parts["reconstruction"].item() == pytest.approx(0.25)
    assert parts["commitment"].item() == pytest.approx(0.1)  # the quantizer's terms, as it gave them
    assert parts["quantizer"].item() == pytest.approx(0.3)  # its objective, weighted by quantizer_weight here
    assert parts["vq"].item() == pytest.approx(2.0 * 0.25 + 0.5 * 0.7 + 3.0 * 0.3)
    assert set(parts) == {"caption", "reconstruction", "perceptual", "commitment", "codebook", "quantizer", "vq",
                          "total"}


def test_quantizer_terms_without_an_objective_are_refused():
    with pytest.raises(ValueError, match="without its objective"):
        ETTLoss(perceptual_weight=0.0)(torch.tensor(1.0), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4),
                                       {"commitment": torch.tensor(0.1)})


def test_caption_only_when_tokenizer_frozen():
    total, parts = ETTLoss(caption_weight=2.0, perceptual_weight=0.0)(torch.tensor(1.25))
    assert total.item() == 2.5 and set(parts) == {"caption", "total"}


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        ETTLoss(alpha=-1.0, perceptual_weight=0.0)


def test_lpips_with_random_backbone_is_zero_for_identical_images_and_positive_otherwise():
    lpips = LPIPSLoss(random_backbone=True)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips(a, b).item() > 0
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training


def test_lpips_backbone_loads_from_local_torchvision_file(tmp_path):
    import torchvision

    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    lpips = LPIPSLoss(backbone_weights=str(path))
    assert torch.equal(getattr(lpips.lpips.net.slice2, "5").weight, vgg.features[5].weight)


def test_lpips_missing_backbone_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_weights file not found"):
        LPIPSLoss(backbone_weights=str(tmp_path / "missing.pth"))


class Recorded(Logger):
    """The metrics a real fit writes, step by step."""

    name, version = "recorded", "0"

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, float]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.steps.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_train_total_is_recomputed_from_the_logged_parts():
    """In a real fit with an IBQ tokenizer and a discriminator: train/quantizer from the quantizer's logged terms,
    train/total from the logged unweighted parts and the recipe's weights, the discriminator's objective apart."""
    loss = ETTLoss(caption_weight=1.5, alpha=0.4, reconstruction_weight=2.0, perceptual_weight=0.0,
                   quantizer_weight=0.7, adversarial_weight=0.5,
                   adversarial=small_adversarial())
    module = tiny_module("ett", loss=loss)
    recorded = Recorded()
    fit(module, steps=2, logger=recorded, log_every_n_steps=1)
    assert len(recorded.steps) == 2
    beta = module.tokenizer.quantize.beta
    for logged in recorded.steps:
        part = {name.removeprefix("train/"): value for name, value in logged.items() if name.startswith("train/")}
        assert part["quantizer"] == pytest.approx(part["quantization"] + part["commitment"] + beta * part["codebook"],
                                                  rel=1e-5)
        vq = 2.0 * part["reconstruction"] + 0.7 * part["quantizer"] + part["d_weight"] * part["g_adv"]
        assert part["vq"] == pytest.approx(vq, rel=1e-5)
        assert part["total"] == pytest.approx(1.5 * part["caption"] + 0.4 * vq, rel=1e-5)
        assert part["discriminator"] == pytest.approx(loss.adversarial.discriminator_weight * part["d_loss"], rel=1e-5)
