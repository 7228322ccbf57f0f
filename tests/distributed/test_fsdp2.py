"""FSDP2 sharding of ETT modules in one process (a world of one rank: every parameter a DTensor, every forward
through FSDP's hooks) against the same module unsharded, and generation under 2 spawned processes whose ranks
finish at different lengths. The recipes under 2 processes with ``--trainer.strategy=fsdp2`` are in
test_ddp_runs.py and test_fsdp2_runs.py."""

from __future__ import annotations

import copy
import json
import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from ett_lightning import ETTLoss, LPIPSLoss
from ett_lightning.distributed import FSDP2Strategy, is_sharded, shard_module
from ett_lightning.distributed.fsdp2 import check_shardable, dtype_named
from ett_lightning.losses.adversarial import AdversarialLoss
from ett_lightning.losses.discriminator import PatchGANDiscriminator
from ett_lightning.models import LoRA
from ett_lightning.models.lora import is_adapter
from ett_lightning.tasks import TokenizerPretraining
from tests.conftest import fit, free_port, make_batch, tiny_module, tiny_tokenizer
from tests.distributed.rank_digest import whole
from tests.distributed.two_sharded_ranks import MAX_NEW_TOKENS, run_on_rank


@pytest.fixture
def mesh():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_units_keep_names_and_frozen_flags(mesh):
    module = tiny_module("align")
    module.fsdp_entry_methods = ("caption_loss",)  # a method of a subclass's own, called between steps
    names = [name for name, _ in module.named_parameters()]
    units = shard_module(module, mesh, MixedPrecisionPolicy())
    registered = vars(module)  # registering binds a gathering wrapper on the instance
    assert {"training_step", "generate", "caption_loss"} <= registered.keys() and "compute_losses" not in registered
    assert {"encode", "decode", "embed_indices"} <= vars(module.tokenizer).keys()
    assert "language_model.model.model.layers.0" in units and "language_model.model.model.layers.1" in units
    assert any(unit.startswith("tokenizer.encoder.") for unit in units)
    assert units[-3:] == ["tokenizer", "projector", "<root>"] and is_sharded(module)
    assert [name for name, _ in module.named_parameters()] == names
    assert all(isinstance(p, DTensor) for p in module.parameters())
    assert not any(p.requires_grad for p in module.tokenizer.parameters())
    assert all(p.requires_grad for p in module.projector.parameters())


def with_loss_networks() -> ETTLoss:
    """LPIPS (random backbone) and a PatchGAN with a fixed weight: the loss networks FSDP2 can run."""
    return ETTLoss(perceptual_weight=1.0, perceptual=LPIPSLoss(random_backbone=True), adversarial_weight=0.1,
                   adversarial=AdversarialLoss(PatchGANDiscriminator(ch=8, num_layers=2), adaptive_weight=False))


@pytest.mark.parametrize(("stage", "activation_checkpointing", "lora", "loss_networks"),
                         [("ett", False, None, with_loss_networks), ("align", True, None, None),
                          ("ett", True, LoRA(rank=4, dropout=0.0), None)],
                         ids=["ett_lpips_gan", "align_checkpointed", "ett_lora_checkpointed"])
def test_a_sharded_step_equals_the_unsharded_one(mesh, stage, activation_checkpointing, lora, loss_networks):
    """Loss and every gradient equal the unsharded module's; frozen components (and a LoRA LLM's own weights) get
    none."""
    torch.manual_seed(0)
    module = tiny_module(stage, lora=lora, loss=loss_networks and loss_networks())
    reference = copy.deepcopy(module)
    batch = make_batch(module)
    shard_module(module, mesh, MixedPrecisionPolicy(), activation_checkpointing=activation_checkpointing)
    loss = module.training_step(batch, 0)
    loss.backward()
    expected = reference.training_step(batch, 0)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    sharded = dict(module.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is None:
            assert sharded[name].grad is None, f"{name} is frozen or unused but got a gradient"
        else:
            torch.testing.assert_close(whole(sharded[name].grad), param.grad, msg=name)
    trained = {name.split(".")[0] for name, p in reference.named_parameters() if p.grad is not None}
    expected = {"tokenizer", "projector", "language_model"} if stage == "ett" else {"projector"}
    assert trained == expected | ({"loss"} if loss_networks else set())  # the discriminator trains; LPIPS stays frozen
    if lora is not None:
        llm_trained = {name for name, p in reference.named_parameters() if name.startswith("language_model.")
                       and p.grad is not None}
        assert llm_trained and all(is_adapter(name) for name in llm_trained)


def test_bfloat16_policy_computes_in_bfloat16_and_keeps_float32_shards(mesh):
    """The model computes in bf16; the loss's networks (fp32 buffers beside their weights: LPIPS's input scaling,
    BatchNorm statistics) stay a float32 unit of their own and still train (the discriminator)."""
    module = tiny_module("ett", loss=with_loss_networks())
    batch = make_batch(module)
    units = shard_module(module, mesh, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    assert units[-4:] == ["loss", "tokenizer", "projector", "<root>"]
    seen = []
    for part in (module.projector, module.loss.perceptual.lpips, module.loss.adversarial.discriminator):
        part.register_forward_hook(lambda _, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    module.training_step(batch, 0).backward()
    assert seen[0] == (torch.bfloat16, torch.bfloat16)
    assert set(seen[1:]) == {(torch.float32, torch.float32)} and len(seen) == 5  # LPIPS, real, fake, generator
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in module.parameters() if p.grad is not None} == {torch.float32}
    assert all(p.grad is not None for p in module.loss.adversarial.discriminator.parameters())


@pytest.fixture
def one_rank_trainer_environment():
    """Lightning's process group setup writes MASTER_ADDR, WORLD_SIZE, RANK, ... into the environment: restored."""
    environment = dict(os.environ)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


def test_tokenizer_pretraining_trains_under_the_strategy_and_a_module_without_configure_model_is_told_why(
        one_rank_trainer_environment):
    """Tokenizer pre-training (its loss called through ``vq_loss``, LPIPS and a PatchGAN, bf16 policy) takes two
    sharded steps in a Trainer; a module without ``configure_model`` gets a message naming the fix."""
    module = TokenizerPretraining(tiny_tokenizer(), loss=with_loss_networks())
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    fit(module, steps=2, devices=1, strategy=FSDP2Strategy(param_dtype="bfloat16"))
    assert is_sharded(module) and all(isinstance(p, DTensor) for p in module.parameters())
    changed = {name.split(".")[0] for name, p in module.named_parameters() if not torch.equal(whole(p), before[name])}
    assert changed == {"tokenizer", "loss"}  # the discriminator trains; LPIPS is frozen

    class WithoutConfigureModel(TokenizerPretraining):
        configure_model = L.LightningModule.configure_model

    with pytest.raises(TypeError, match="add one that does nothing"):
        fit(WithoutConfigureModel(tiny_tokenizer(), loss=ETTLoss(perceptual_weight=0.0)), steps=1, devices=1,
            strategy=FSDP2Strategy())


def test_options_are_checked():
    assert FSDP2Strategy(param_dtype="bfloat16").mp_policy.param_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="not a floating-point torch dtype"):
        dtype_named("int8")
    with pytest.raises(ValueError, match="adaptive weight cannot run under FSDP2"):
        check_shardable(tiny_module("ett", loss=ETTLoss(perceptual_weight=0.0, adversarial_weight=0.1)))


@pytest.mark.slow
@pytest.mark.ddp
def test_two_sharded_ranks_generate_to_different_lengths_and_train_lora(tmp_path):
    """Every forward of a sharded model is a collective: rank 0 stops after 2 tokens and keeps running rank 1's
    forwards until rank 1 is done at 9 (synced generation); each rank's answers equal its unsharded answers. Then a
    LoRA module steps on each rank's batch: the averaged gradients equal the unsharded module's on both batches, and
    reach the adapters, tokenizer and projector but none of the LLM's own weights."""
    context = mp.start_processes(run_on_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    for _ in range(120):
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the sharded ranks did not finish in 120 s (a rank waits in a collective)")
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert results["sharded"] == results["unsharded"] and len(results["sharded"]) == 1 + rank
        errors = results["lora_gradients"]
        assert {name.split(".")[0] for name in errors} == {"tokenizer", "projector", "language_model"}
        assert all(is_adapter(name) for name in errors if name.startswith("language_model."))
        assert max(errors.values()) < 1e-5, max(errors.items(), key=lambda item: item[1])
    assert MAX_NEW_TOKENS[0] < MAX_NEW_TOKENS[1]
