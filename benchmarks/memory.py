"""Memory per rank of ETT stage 2 at paper scale (the IBQ tokenizer of recipes/ett_sft.yaml with a Qwen2.5-1.5B- or
7B-shaped LLM), for DDP and FSDP2 on ``--ranks`` ranks, full fine-tuning or LoRA, with and without activation
checkpointing.

- Parameters, gradients and AdamW states are counted from the real modules, built on the meta device (no memory,
  no weights): 4 bytes per fp32 value, 2 per bf16 value, gradients and two moments for what trains.
- Activations are measured: the tensors autograd saves (``saved_tensors_hooks``, each storage once) in the forward
  of one decoder layer of the real width, of the LM head and loss, and of the tokenizer with the perceptual loss,
  on the CPU under bf16 autocast, at two sizes (the difference per token or image leaves out the weights layers
  keep for backward), then scaled to the recipe's batch (``--batch-size`` images of ``--tokens-per-sample`` LLM
  tokens) and layer count. With activation checkpointing, the tokenizer is measured with its own gradient
  checkpointing on, and each decoder layer keeps its bf16 input plus one layer's full activations (the one
  being recomputed).
- FSDP2 adds two gathered units (the one computing and the one prefetched: the two largest, in bf16, the loss's
  networks in fp32), the largest once more (the all-gather buffer its weights are copied out of) and the largest
  unit's whole fp32 gradient before its reduce-scatter.
- DDP adds its gradient buckets (a copy of the trained parameters' gradients).

Not counted: the CUDA context and allocator fragmentation (budget a few GB), temporary buffers of single kernels.
The CPU kernels save what the GPU kernels save except for attention, where both keep O(tokens) state (flash/
memory-efficient SDPA).

    python benchmarks/memory.py --ranks 8
"""

from __future__ import annotations

import argparse
import gc
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

sys.path.insert(0, str(Path(__file__).parent))
from throughput import build  # noqa: E402

from ett_lightning.distributed.units import loss_networks, wrap_classes  # noqa: E402
from ett_lightning.models.lora import is_adapter  # noqa: E402

CONFIG = str(Path(__file__).parent / "configs" / "ett_sft_qwen2.5-1.5b.yaml")
LLM = "--model.init_args.language_model.init_args"
SHAPES = {
    "1.5B": [],
    "7B": [f"{LLM}.config.hidden_size=3584", f"{LLM}.config.intermediate_size=18944",
           f"{LLM}.config.num_attention_heads=28", f"{LLM}.config.num_key_value_heads=4",
           f"{LLM}.config.vocab_size=152064", f"{LLM}.config.tie_word_embeddings=false",
           "--model.init_args.projector.init_args.out_dim=3584"],
}
LORA = [f"{LLM}.lora.rank=16", f"{LLM}.dtype=bfloat16"]
GB = 1e9


def build_on_meta(overrides: list[str]) -> nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return build(CONFIG, overrides)


def state_bytes(module: nn.Module) -> dict[str, float]:
    """Weights (their own dtype), and fp32 gradients and AdamW moments of what trains, in bytes."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"weights": weights, "gradients": 4 * trained, "adam": 8 * trained, "trained": trained,
            "parameters": sum(p.numel() for p in module.parameters())}


def fsdp2_units(module: nn.Module) -> list[tuple[float, int]]:
    """(bytes gathered, parameters trained) of each FSDP2 unit, formed as ``shard_module`` forms them: each block,
    then the loss's networks (gathered in their own fp32), the tokenizer, the projector and the root (in bf16)."""
    blocks = [m for m in module.modules() if isinstance(m, tuple(wrap_classes(module)))]
    loss = [unit for unit in (loss_networks(module),) if unit is not None]
    seen: set[int] = set()
    units = []
    for unit in [*blocks, *loss, module.tokenizer, module.projector, module]:
        params = [p for p in unit.parameters() if id(p) not in seen]
        seen |= {id(p) for p in params}
        bytes_per_value = 4 if unit in loss else 2
        units.append((bytes_per_value * sum(p.numel() for p in params),
                      sum(p.numel() for p in params if p.requires_grad)))
    return units


class SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the context, each storage counted once."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedBytes:
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def per_item(forward, make_inputs, sizes: tuple[int, int]) -> float:
    """Bytes autograd saves per item (token or image) in ``forward(*make_inputs(n))`` under bf16 autocast: the
    difference between two sizes, so what does not grow with the batch (the weights layers keep for backward,
    their bf16 copies) is not counted as activations."""
    totals = []
    for size in sizes:
        with SavedBytes() as saved, torch.autocast("cpu", dtype=torch.bfloat16):
            output = forward(*make_inputs(size))
        del output
        totals.append(saved.total)
    return (totals[1] - totals[0]) / (sizes[1] - sizes[0])


def llm_activations(meta: PretrainedConfig, tokens: int) -> dict[bool, float]:
    """For the LLM of config ``meta``: decoder layers (one layer of the real width, measured per token, times the
    layer count) and the LM head with its loss (per token), for ``tokens`` tokens per rank, without and with
    activation checkpointing (then each layer keeps its bf16 input and the one being recomputed holds its full
    activations)."""
    settings = {k: v for k, v in meta.to_dict().items() if k != "layer_types"}
    config = type(meta).from_dict({**settings, "num_hidden_layers": 1})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    layer = model.model.layers[0]

    def hidden(size: int) -> tuple[torch.Tensor]:
        return (torch.randn(1, size, config.hidden_size, requires_grad=True),)

    def decoder_layer(h: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(h.shape[1])[None]
        out = layer(h, position_embeddings=model.model.rotary_emb(h, positions), position_ids=positions)
        return out[0] if isinstance(out, tuple) else out

    def head(h: torch.Tensor) -> torch.Tensor:
        logits = model.lm_head(model.model.norm(h))
        labels = torch.zeros(logits.shape[:-1], dtype=torch.long)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    per_layer_token = per_item(decoder_layer, hidden, (128, 256))
    head_token = per_item(head, hidden, (128, 256))
    layers, head_bytes = meta.num_hidden_layers, head_token * tokens
    return {False: per_layer_token * tokens * layers + head_bytes,
            True: 2 * config.hidden_size * tokens * layers + per_layer_token * tokens + head_bytes}


def tokenizer_activations(images: int, checkpointed: bool, overrides: tuple[str, ...] = (),
                          image_size: int = 256) -> float:
    """The recipe's tokenizer (encoder, quantizer, decoder; ``overrides`` may reshape it) with the reconstruction
    and perceptual losses at ``image_size`` px, measured per image, for ``images`` images per rank."""
    tiny_llm = [f"{LLM}.config.hidden_size=64", f"{LLM}.config.intermediate_size=128", f"{LLM}.config.vocab_size=512",
                f"{LLM}.config.num_hidden_layers=1", f"{LLM}.config.num_attention_heads=4",
                f"{LLM}.config.num_key_value_heads=2", "--model.init_args.projector.init_args.out_dim=64"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the LLM, unused here, shrunk
        module = build(CONFIG, [*overrides, *tiny_llm,
                                f"--model.init_args.tokenizer.init_args.gradient_checkpointing={checkpointed}"])

    def losses(x: torch.Tensor) -> torch.Tensor:
        reconstruction, _ = module.tokenizer(x)
        return (reconstruction - x).abs().mean() + module.loss.perceptual(reconstruction, x).mean()

    return per_item(losses, lambda n: (torch.rand(n, 3, image_size, image_size) * 2 - 1,), (1, 2)) * images


def per_rank(module: nn.Module, strategy: str, ranks: int, activations: float) -> dict[str, float]:
    """Bytes per rank of ``module`` (built on the meta device) trained under ``strategy`` ("DDP" or "FSDP2") on
    ``ranks`` ranks with ``activations`` bytes of activations. FSDP2 shards the states and adds the two largest
    gathered units (the one computing and the one prefetched), the largest once more (its all-gather buffer while
    the weights are copied out of it) and the largest unit's whole fp32 gradient (before its reduce-scatter); DDP
    keeps whole states and adds its gradient buckets."""
    counts = state_bytes(module)
    shard = ranks if strategy == "FSDP2" else 1
    if strategy == "FSDP2":
        units = fsdp2_units(module)
        largest = sorted(gathered for gathered, _ in units)
        extra = largest[-1] * 2 + largest[-2] + 4 * max(trained for _, trained in units)
    else:
        extra = counts["gradients"]
    return {"weights": counts["weights"] / shard, "gradients": counts["gradients"] / shard,
            "adam": counts["adam"] / shard, "extra": extra, "activations": activations}


def table(ranks: int, batch_size: int, tokens_per_sample: int) -> list[str]:
    tokens = batch_size * tokens_per_sample
    rows = ["| LLM | strategy | LLM trains | act. ckpt | weights | gradients | AdamW | extra | activations | total "
            "(GB per rank) |", "|---|---|---|---|---|---|---|---|---|---|"]
    tokenizer = {ckpt: tokenizer_activations(batch_size, ckpt) for ckpt in (False, True)}
    print(f"tokenizer activations for {batch_size} images: {tokenizer[False] / GB:.1f} GB, "
          f"{tokenizer[True] / GB:.1f} GB with gradient checkpointing")
    for shape in SHAPES:
        modules = {lora: build_on_meta([*SHAPES[shape], *(LORA if lora else [])]) for lora in (False, True)}
        llm = llm_activations(modules[False].language_model.causal_lm.config, tokens)
        print(f"{shape} LLM activations for {tokens} tokens: {llm[False] / GB:.1f} GB, "
              f"{llm[True] / GB:.1f} GB with activation checkpointing")
        gc.collect()
        for lora, module in modules.items():
            counts = state_bytes(module)
            for strategy in ("DDP", "FSDP2"):
                for ckpt in (False, True):
                    parts = list(per_rank(module, strategy, ranks, llm[ckpt] + tokenizer[ckpt]).values())
                    rows.append(f"| {shape} | {strategy} x{ranks} | {'LoRA' if lora else 'all'} | "
                                f"{'yes' if ckpt else 'no'} | " + " | ".join(f"{p / GB:.1f}" for p in parts)
                                + f" | **{sum(parts) / GB:.1f}** |")
            adapters = sum(p.numel() for n, p in module.named_parameters() if is_adapter(n))
            print(f"{shape} {'LoRA' if lora else 'full'}: {counts['parameters'] / 1e9:.2f}B parameters, "
                  f"{counts['trained'] / 1e9:.3f}B trained ({adapters / 1e6:.1f}M adapter parameters)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="images per rank per step (the recipe's)")
    parser.add_argument("--tokens-per-sample", type=int, default=384,
                        help="LLM tokens per image-text sample: 256 image tokens + up to 128 text tokens")
    options = parser.parse_args()
    print("\n".join(table(options.ranks, options.batch_size, options.tokens_per_sample)))


if __name__ == "__main__":
    main()
