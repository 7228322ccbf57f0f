"""Adversarial loss: formula of the adaptive weight, gradient routing between the players, start step, LeCam,
the discriminators, and a module trained with it."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ett_lightning.losses import AdversarialLoss, ETTLoss, PatchGANDiscriminator, TimmDiscriminator, adaptive_weight
from ett_lightning.tasks import TokenizerPretraining
from tests.conftest import IMAGE_SIZE, make_batch, tiny_module, tiny_tokenizer


def small_adversarial(**kwargs) -> AdversarialLoss:
    torch.manual_seed(0)
    return AdversarialLoss(PatchGANDiscriminator(ch=8, num_layers=2), **kwargs)


def test_adaptive_weight_equals_its_formula():
    last = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    nll = (x @ last.T).square().mean()
    g = -(x @ last.T).sin().mean()
    expected = torch.autograd.grad(nll, last, retain_graph=True)[0].norm() / (
        torch.autograd.grad(g, last, retain_graph=True)[0].norm() + 1e-4)
    assert torch.allclose(adaptive_weight(nll, g, last), expected)
    assert adaptive_weight(nll, g, last, max_weight=1e-3) == pytest.approx(1e-3)


def test_each_player_gets_gradient_only_from_its_own_term():
    tokenizer = tiny_tokenizer()
    adversarial = small_adversarial(weight=0.5)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    reconstructions, _ = tokenizer(images)
    nll = (reconstructions - images).abs().mean()
    g_term, d_term, parts = adversarial(images, reconstructions, nll, tokenizer.last_layer, step=0)
    d_params, g_params = list(adversarial.discriminator.parameters()), list(tokenizer.parameters())
    from_g = torch.autograd.grad(g_term, d_params + g_params, retain_graph=True, allow_unused=True)
    from_d = torch.autograd.grad(d_term, d_params + g_params, allow_unused=True)
    assert all(g is None for g in from_g[:len(d_params)])
    assert any(g is not None and g.abs().sum() > 0 for g in from_g[len(d_params):])
    assert all(g is None for g in from_d[len(d_params):])
    assert all(g is not None for g in from_d[:len(d_params)])
    assert set(parts) >= {"g_adv", "d_loss", "d_weight", "logits_real", "logits_fake"}


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_losses_equal_their_formulas(kind):
    adversarial = small_adversarial(loss=kind, adaptive_weight=False, weight=0.3, discriminator_weight=2.0)
    images, fakes = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    real, fake = adversarial.discriminator(images), adversarial.discriminator(fakes)
    g_term, d_term, parts = adversarial(images, fakes, torch.zeros(()), torch.zeros(1), step=0)
    if kind == "hinge":
        expected_d = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        expected_g = -fake.mean()
    else:
        expected_d = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
        expected_g = F.softplus(-fake).mean()
    assert torch.allclose(d_term, 2.0 * expected_d) and torch.allclose(g_term, 0.3 * expected_g)


def test_before_the_start_step_the_discriminator_neither_trains_nor_contributes():
    torch.manual_seed(0)
    loss = ETTLoss(perceptual_weight=0.0, adversarial_weight=0.5, adversarial=small_adversarial(start_step=100))
    module = TokenizerPretraining(tiny_tokenizer(), loss=loss, learning_rate=1e-3)
    before = {k: v.clone() for k, v in loss.adversarial.discriminator.state_dict().items()}
    batches = [make_batch(tiny_module()) for _ in range(3)]
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    after = loss.adversarial.discriminator.state_dict()
    parameters = dict(loss.adversarial.discriminator.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in parameters)
    assert module.train_parts["g_adv"] == 0 and module.train_parts["d_weight"] == 0
    images = batches[0].normalized().images
    reconstructions, encoded = module.tokenizer(images)
    vq, parts = loss.vq_loss(images, reconstructions, encoded.quant_losses, module.tokenizer.last_layer, step=0)
    assert torch.equal(vq, loss.reconstruction_weight * parts["reconstruction"] + parts["quantizer"])
    assert parts["discriminator"] == 0


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_after_the_start_step_both_players_train_with_separate_clipping(precision):
    torch.manual_seed(0)
    loss = ETTLoss(perceptual_weight=0.0, adversarial_weight=0.5, adversarial=small_adversarial(lecam_weight=0.1))
    module = TokenizerPretraining(tiny_tokenizer(), loss=loss, learning_rate=1e-3)
    before_d = [p.clone() for p in loss.adversarial.discriminator.parameters()]
    before_g = [p.clone() for p in module.tokenizer.parameters()]
    batches = [make_batch(tiny_module(), seed=s) for s in range(2)]
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1e-3, precision=precision)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before_d, loss.adversarial.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, module.tokenizer.parameters()))
    assert module.train_parts["d_weight"] > 0 and "lecam" in module.train_parts
    assert loss.adversarial.ema_real != 0
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["discriminator"]["betas"] == (0.5, 0.9) and groups["discriminator"]["weight_decay"] == 0.0


def test_frozen_tokenizer_stages_freeze_the_discriminator():
    module = tiny_module("posttrain", loss=ETTLoss(perceptual_weight=0.0, adversarial_weight=0.1))
    assert not any(p.requires_grad for p in module.loss.adversarial.parameters())
    tuned = tiny_module("ett", loss=ETTLoss(perceptual_weight=0.0, adversarial_weight=0.1))
    assert all(p.requires_grad for p in tuned.loss.adversarial.parameters())


def test_the_caption_loss_never_reaches_the_discriminator():
    module = tiny_module("ett", loss=ETTLoss(perceptual_weight=0.0, adversarial_weight=0.1))
    batch = make_batch(module).normalized()
    encoded = module.encode_images(batch.images)
    caption = module.caption_loss(batch, module.projector(encoded.embeddings))
    grads = torch.autograd.grad(caption, list(module.loss.adversarial.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_adversarial_without_weight_is_a_configuration_error():
    with pytest.raises(ValueError, match="adversarial_weight is 0"):
        ETTLoss(perceptual_weight=0.0, adversarial=small_adversarial())
    assert ETTLoss(perceptual_weight=0.0).adversarial is None


def test_patchgan_gives_one_logit_per_patch_and_rejects_unknown_norms():
    for norm in ("batch", "group", "none"):
        assert PatchGANDiscriminator(ch=8, num_layers=3, norm=norm)(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="norm must be"):
        PatchGANDiscriminator(norm="layer")


def test_timm_discriminator_trains_heads_only_and_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(model_name="vit_tiny_patch16_224", feature_layers=(0,), image_size=32,
                  model_kwargs={"img_size": 32, "depth": 1})
    disc = TimmDiscriminator(**kwargs).train()
    assert not disc.backbone.training
    logits = disc(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert logits.shape == (2, 4)
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    save_file(disc.backbone.state_dict(), tmp_path / "backbone.safetensors")
    with pytest.raises(FileNotFoundError, match="discriminator backbone weights not found"):
        TimmDiscriminator(weights=str(tmp_path / "absent.safetensors"), **kwargs)
