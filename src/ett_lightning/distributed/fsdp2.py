"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ETT modules, selected as ``--trainer.strategy=fsdp2``.

Each rank holds 1/world_size of every parameter, gradient and optimizer state. The sharding units are found from
the model: each LLM decoder layer and each tokenizer block, then the loss's networks, the tokenizer and the
projector, then the LightningModule itself (the LLM's embeddings, final norm and head, and any task heads), so
tied embeddings stay in one unit. A unit gathers its parameters when it runs and frees them after. ETT calls its
parts through methods (``tokenizer.encode``, ``module.generate``, the step methods), not only ``forward``, so
those methods are registered to gather like ``forward`` does
(:func:`~torch.distributed.fsdp.register_fsdp_forward_method`).

Parameters keep their names and ``requires_grad``: stage freezing, per-component learning rates and checkpoints
work as under DDP. Checkpoints are one file with full weights by default (``ett export`` and ``--ckpt_path=last``
read it like a DDP checkpoint).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.strategies.model_parallel import _load_raw_module_state
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from ett_lightning.checkpoints.atomic import promote_folder, temporary_path
from ett_lightning.checkpoints.folder import check_folder
from ett_lightning.distributed.units import loss_networks, wrap_classes

log = logging.getLogger(__name__)

#: Methods of a module or its tokenizer that use parameters outside ``forward`` (steps, generation, callbacks).
ENTRY_METHODS = ("training_step", "validation_step", "test_step", "predict_step", "generate", "generate_images",
                 "encode", "decode", "decode_indices", "embed_indices")


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` is sharded by FSDP2: then each of its forwards is a collective, and every rank must run as
    many as the others (callbacks generate on every rank, and generation runs until all ranks are done)."""
    return isinstance(module, FSDPModule)


def dtype_named(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; None stays None (the parameters' own dtype)."""
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name!r} is not a floating-point torch dtype; use e.g. bfloat16, float16 or float32")
    return dtype


def check_shardable(module: nn.Module) -> None:
    """Refuses what FSDP2 cannot run: the adversarial loss's adaptive weight differentiates with respect to the
    decoder's last weight, which is a shard outside the tokenizer's forward, not the gathered weight the graph
    used."""
    adversarial = getattr(getattr(module, "loss", None), "adversarial", None)
    if adversarial is not None and getattr(adversarial, "adaptive_weight", False):
        raise ValueError("the adversarial loss's adaptive weight cannot run under FSDP2 (it needs gradients at the "
                         "decoder's last layer, which FSDP2 shards); train the tokenizer with the GAN under "
                         "strategy ddp (it fits on one GPU), or set loss.adversarial.init_args.adaptive_weight: false")


def shard_module(module: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy,
                 activation_checkpointing: bool = False, reshard_after_forward: bool = True) -> list[str]:
    """Applies ``fully_shard`` to ``module``'s units, innermost first, and returns the units' names.

    Blocks (:func:`~ett_lightning.distributed.units.wrap_classes`) are recomputed in backward when
    ``activation_checkpointing``; the tokenizer and the projector are units of their own so callbacks can call
    them between steps; the module is the root. The loss's networks (LPIPS, the discriminator), when it has any,
    are a unit that keeps its parameters' own dtype under every policy: they hold fp32 buffers (LPIPS's input
    scaling, BatchNorm statistics) that a bf16 policy would leave beside bf16 weights, and they are small.
    """
    block_classes = tuple(wrap_classes(module))
    names = [name for name, child in module.named_modules() if block_classes and isinstance(child, block_classes)]
    for name in names:
        block = module.get_submodule(name)
        if activation_checkpointing:
            checkpoint(block)
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    loss = loss_networks(module)
    if loss is not None:
        full_precision = MixedPrecisionPolicy(reduce_dtype=mp_policy.reduce_dtype)
        shard_with_entry_methods(loss, mesh, full_precision, reshard_after_forward)
        names.append("loss")
    for name in ("tokenizer", "projector"):
        if isinstance(getattr(module, name, None), nn.Module):
            shard_with_entry_methods(getattr(module, name), mesh, mp_policy, reshard_after_forward)
            names.append(name)
    shard_with_entry_methods(module, mesh, mp_policy, reshard_after_forward=False)
    return [*names, "<root>"]


def shard_with_entry_methods(module: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy,
                             reshard_after_forward: bool) -> None:
    """``fully_shard`` that also gathers the parameters for the :data:`ENTRY_METHODS` the module has, and for the
    names in its class's ``fsdp_entry_methods`` (a subclass calling sharded parts from methods of its own)."""
    fully_shard(module, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    for method in (*ENTRY_METHODS, *getattr(module, "fsdp_entry_methods", ())):
        if callable(getattr(module, method, None)):
            register_fsdp_forward_method(module, method)


def optimizer_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in its own order: the positions ``optimizer.state_dict()`` keys its
    states by (what DDP checkpoints hold)."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def rekeyed(state: dict[str, Any], keys: dict) -> dict[str, Any]:
    """An optimizer state dict with its parameter keys mapped through ``keys`` (names <-> positions)."""
    groups = [{**group, "params": [keys[p] for p in group["params"]]} for group in state["param_groups"]]
    return {"state": {keys[k]: v for k, v in state["state"].items()}, "param_groups": groups}


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel training with FSDP2 over all ranks (no tensor parallelism).

    In a recipe: ``strategy: {class_path: ett_lightning.distributed.FSDP2Strategy, init_args: {...}}``, or
    ``--trainer.strategy=fsdp2`` for the defaults. With ``trainer.precision: 32-true`` the mixed-precision policy
    below casts the gathered parameters, while the sharded master weights and optimizer states stay float32; a
    recipe's ``bf16-mixed`` (autocast over float32 shards) runs too.

    Args:
        param_dtype: dtype parameters are gathered and computed in (``bfloat16`` on GPUs); None keeps float32.
        reduce_dtype: dtype gradients are averaged across ranks in; None uses ``param_dtype``.
        activation_checkpointing: recompute each block's activations in backward instead of keeping them
            (about a third more compute for activations of one block per layer).
        reshard_after_forward: free each block's gathered parameters after its forward and gather them again in
            backward (less memory, one more all-gather per block).
        save_distributed_checkpoint: one file per rank in a checkpoint folder instead of one full file (faster
            for very large models; ``ett export`` reads single files only).
        timeout: how long a collective waits before the job fails (a hang ends instead of idling).
    """

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = "float32",
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, timeout=timeout)
        self.mp_policy = MixedPrecisionPolicy(param_dtype=dtype_named(param_dtype),
                                              reduce_dtype=dtype_named(reduce_dtype))
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        """One data-parallel dimension over every rank of every node."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer: L.Trainer) -> None:
        """Shards the module (once, also when ``fit`` is followed by ``validate``), then Lightning's setup."""
        module = self.lightning_module
        if not is_overridden("configure_model", module):
            raise TypeError(f"FSDP2Strategy shards {type(module).__name__} itself, but Lightning's model-parallel "
                            "setup only accepts a LightningModule that defines configure_model(): add one that does "
                            "nothing (no fully_shard calls of your own)")
        if not is_sharded(module):
            check_shardable(module)
            units = shard_module(module, self.device_mesh["data_parallel"], self.mp_policy,
                                 self.activation_checkpointing, self.reshard_after_forward)
            log.info("FSDP2 units (%d): %s", len(units), ", ".join(units[:4] + (["..."] if len(units) > 4 else [])))
        super().setup(trainer)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole optimizer state on rank 0 (empty on the others), keyed by position like ``optimizer.state_dict()``
        under DDP, so a checkpoint resumes under either strategy. Lightning's own keys follow the module's parameter
        order instead, which differs from the optimizer's (groups per component and weight decay)."""
        if self._save_distributed_checkpoint:
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(self.model, optimizer, options=options)
        if not state:
            return state
        return rekeyed(state, {name: i for i, name in enumerate(optimizer_order(self.model, optimizer))})

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path,
                        storage_options: Any | None = None) -> None:
        """A checkpoint folder is written whole beside its target and then takes the target's place
        (:func:`~ett_lightning.checkpoints.atomic.promote_folder`): a kill during the save leaves the previous
        complete folder, never new shards beside an old ``.metadata``. One-file checkpoints go through the
        checkpoint IO (``AtomicCheckpointIO`` in the recipes)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        staging_pid = self.broadcast(os.getpid())  # rank 0's pid names the folder every rank writes into
        staging = temporary_path(target, staging_pid)
        if self.global_rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        self.barrier("checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("checkpoint_written")  # meta.pt is rank 0's, after every rank's shards
        if self.global_rank == 0:
            promote_folder(staging, target, temporary_path(target, staging_pid, "old"))
        self.barrier("checkpoint_in_place")

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """A one-file checkpoint (this strategy's or DDP's): full weights and position-keyed optimizer states, each
        rank keeping its shards; a checkpoint folder (``save_distributed_checkpoint``) loads as Lightning does, once
        :func:`~ett_lightning.checkpoints.folder.check_folder` has found nothing but data in it."""
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            check_folder(path)
            return super().load_checkpoint(path, weights_only)
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        strict = self.lightning_module.strict_loading
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, strict=strict)
        options = StateDictOptions(full_state_dict=True, strict=strict)
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            optimizer = getattr(optimizer, "_optimizer", optimizer)
            names = dict(enumerate(optimizer_order(self.model, optimizer)))
            set_optimizer_state_dict(self.model, optimizer, rekeyed(state, names), options=options)
        return checkpoint


StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 sharding of ETT modules (ett_lightning)")
