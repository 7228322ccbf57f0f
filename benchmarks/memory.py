"""Memory per rank of ETT stage 2 at paper scale (the IBQ tokenizer of recipes/ett_sft.yaml with a Qwen2.5-1.5B- or
7B-shaped LLM), for DDP and FSDP2 on ``--ranks`` ranks, full fine-tuning or LoRA, with and without activation
checkpointing.

- Parameters, gradients and AdamW states are counted from the real modules, built on the meta device (no memory,
  no weights): 4 bytes per fp32 value, 2 per bf16 value, gradients and two moments for what trains.
- Activations are measured, not modelled: the tensors autograd saves (``saved_tensors_hooks``, each storage once)
  in one forward of one decoder layer of the real width, of the LM head and loss, and of the tokenizer with the
  perceptual loss, on the CPU under bf16 autocast, then scaled to the recipe's batch (``--batch-size`` images of
  ``--tokens-per-sample`` LLM tokens) and layer count. With activation checkpointing the same forwards run
  checkpointed, and one decoder layer's full activations are added (the one being recomputed).
- FSDP2 adds two gathered units (the one computing and the one prefetched), the largest unit in bf16.
- DDP adds its gradient buckets (a copy of the trained parameters' gradients).

Not counted: the CUDA context and allocator fragmentation (budget a few GB), temporary buffers of single kernels.
The CPU kernels save what the GPU kernels save except for attention, where both keep O(tokens) state (flash/
memory-efficient SDPA).

    python benchmarks/memory.py --ranks 8
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from throughput import build  # noqa: E402

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


def build_on_meta(shape: str, lora: bool) -> nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return build(CONFIG, [*SHAPES[shape], *(LORA if lora else [])])


def state_bytes(module: nn.Module) -> dict[str, float]:
    """Weights (their own dtype), and fp32 gradients and AdamW moments of what trains, in bytes."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"weights": weights, "gradients": 4 * trained, "adam": 8 * trained, "trained": trained,
            "parameters": sum(p.numel() for p in module.parameters())}


def largest_unit_bytes(module: nn.Module) -> int:
    """The biggest FSDP2 unit gathered in bf16: a decoder layer, or the embeddings and head left at the root."""
    layer = module.language_model.causal_lm.model.layers[0]
    root = sum(p.numel() for n, p in module.language_model.named_parameters() if ".layers." not in n)
    return 2 * max(sum(p.numel() for p in layer.parameters()), root)


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


def measured(forward, *inputs: torch.Tensor, checkpointed: bool) -> int:
    """Saved bytes of ``forward(*inputs)`` under bf16 autocast (inputs requiring grad, as inside a network)."""
    with SavedBytes() as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        output = checkpoint(forward, *inputs, use_reentrant=False) if checkpointed else forward(*inputs)
    del output
    return saved.total


def llm_activations(shape: str, tokens: int, checkpointed: bool, sample_tokens: int = 256) -> dict[str, float]:
    """Decoder layers (one layer of the real width, measured per token, times the layer count) and the LM head with
    its loss (per token), for ``tokens`` tokens per rank."""
    meta = build_on_meta(shape, lora=False).language_model.causal_lm.config
    from transformers import AutoModelForCausalLM

    config = type(meta).from_dict({**meta.to_dict(), "num_hidden_layers": 1})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    hidden = torch.randn(1, sample_tokens, config.hidden_size, requires_grad=True)
    positions = torch.arange(sample_tokens)[None]
    rotary = model.model.rotary_emb(hidden, positions)
    layer = model.model.layers[0]
    def decoder_layer(h):
        out = layer(h, position_embeddings=rotary, position_ids=positions)
        return out[0] if isinstance(out, tuple) else out

    per_token = measured(decoder_layer, hidden, checkpointed=False) / sample_tokens
    layers = meta.num_hidden_layers
    labels = torch.randint(0, config.vocab_size, (1, sample_tokens))

    def head(h):
        logits = model.lm_head(model.model.norm(h))
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    head_per_token = measured(head, hidden, checkpointed=False) / sample_tokens
    if checkpointed:  # each layer keeps its bf16 input; the one recomputed holds its full activations
        kept = 2 * config.hidden_size * tokens * layers + per_token * tokens
    else:
        kept = per_token * tokens * layers
    return {"decoder layers": kept, "LM head + loss": head_per_token * tokens}


def tokenizer_activations(images: int, checkpointed: bool) -> float:
    """The tokenizer's encoder, quantizer and decoder and the reconstruction and perceptual losses, measured for one
    256 px image and scaled to ``images``."""
    tiny_llm = [f"{LLM}.config.hidden_size=64", f"{LLM}.config.intermediate_size=128", f"{LLM}.config.vocab_size=512",
                f"{LLM}.config.num_hidden_layers=1", f"{LLM}.config.num_attention_heads=4",
                f"{LLM}.config.num_key_value_heads=2", "--model.init_args.projector.init_args.out_dim=64"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recipe's tokenizer and loss; the LLM, unused here, shrunk
        module = build(CONFIG, [*tiny_llm,
                                f"--model.init_args.tokenizer.init_args.gradient_checkpointing={checkpointed}"])
    image = torch.rand(1, 3, 256, 256) * 2 - 1

    def losses(x):
        reconstruction, _ = module.tokenizer(x)
        return (reconstruction - x).abs().mean() + module.loss.perceptual(reconstruction, x).mean()

    with SavedBytes() as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        losses(image.requires_grad_(False))
    return saved.total * images


def table(ranks: int, batch_size: int, tokens_per_sample: int) -> list[str]:
    tokens = batch_size * tokens_per_sample
    rows = ["| LLM | strategy | LLM trains | act. ckpt | weights | gradients | AdamW | extra | activations | total "
            "(GB per rank) |", "|---|---|---|---|---|---|---|---|---|---|"]
    tokenizer = {ckpt: tokenizer_activations(batch_size, ckpt) for ckpt in (False, True)}
    for shape in SHAPES:
        llm = {ckpt: llm_activations(shape, tokens, ckpt) for ckpt in (False, True)}
        for lora in (False, True):
            module = build_on_meta(shape, lora)
            counts = state_bytes(module)
            for strategy in ("DDP", "FSDP2"):
                shard = ranks if strategy == "FSDP2" else 1
                extra = 2 * largest_unit_bytes(module) if strategy == "FSDP2" else counts["gradients"]
                for ckpt in (False, True):
                    activations = sum(llm[ckpt].values()) + tokenizer[ckpt]
                    parts = [counts["weights"] / shard, counts["gradients"] / shard, counts["adam"] / shard, extra,
                             activations]
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
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("\n".join(table(options.ranks, options.batch_size, options.tokens_per_sample)))


if __name__ == "__main__":
    main()
