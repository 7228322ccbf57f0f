"""How much of the LLM's work goes to real tokens: packed batches vs plain right padding, on a recipe's own data.

Reads ``--batches`` training batches of decoded samples through the recipe's data path (shards, decoding,
tokenization, shuffling), collates each one twice, once padded one sample per row and once packed with the
recipe's ``data.pack_length``, and trains the recipe's model on both in alternation (same samples, same step,
same process). Prints, per layout, real tokens / LLM positions and the median step time, then their ratio; the
last line is ``token_efficiency=<packed real tokens / packed positions>``.

    python benchmarks/token_efficiency.py --config recipes/demo/ett_sft.yaml
    python benchmarks/token_efficiency.py --config recipes/demo/ett_sft.yaml \
        --data.train_shards='data/long_tail/caption/train-*.tar'

Any other ``--key=value`` is a LightningCLI override of the config. ``--pack-length`` replaces the recipe's.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from throughput import optimizer_for, plain_step

from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.skips import SkipCounter


def build(config: str, overrides: list[str]) -> tuple[LightningModule, LightningDataModule]:
    """The recipe's model and data module, instantiated as ``lightning fit --config`` would."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           run=False, save_config_callback=None, args=["--config", config, *overrides])
    return cli.model, cli.datamodule


def sample_batches(module: LightningModule, data: LightningDataModule, count: int) -> list[list[dict]]:
    """``count`` training batches of decoded samples, uncollated, from the recipe's training stream."""
    data.attach(module.text_tokenizer, module.num_image_tokens(data.image_size), module.sequence_layout)
    stages, _ = data.sample_stages(train=True)
    stream = wds.DataPipeline(*stages, wds.batched(data.batch_size, collation_fn=list, partial=False))
    return [batch for batch, _ in zip(stream, range(count))]


def efficiency(batches: list) -> float:
    return sum(int(b.attention_mask.sum()) for b in batches) / sum(b.attention_mask.numel() for b in batches)


def step_times(module: LightningModule, layouts: dict[str, list], warmup: int) -> dict[str, list[float]]:
    """Seconds per training step (forward, backward, AdamW) for each layout, the layouts taking turns per batch
    so that drift in the machine's speed hits both alike."""
    module.train()
    optimizer, scheduler = optimizer_for(module, 10 * len(next(iter(layouts.values()))))
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for index in range(len(next(iter(layouts.values())))):
        for name, batches in layouts.items():
            start = time.perf_counter()
            plain_step(module, batches[index], optimizer, scheduler, "32-true", None)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", type=int, default=10, help="batches measured (after --warmup more)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pack-length", type=int, help="tokens per packed row (default: the recipe's)")
    args, overrides = parser.parse_known_args()
    torch.manual_seed(0)
    module, data = build(args.config, overrides)
    pack_length = args.pack_length or data.pack_length
    if not pack_length:
        raise SystemExit(f"{args.config} sets no data.pack_length; pass --pack-length N")
    samples = sample_batches(module, data, args.batches + args.warmup)
    pad_id, tokens = module.text_tokenizer.pad_token_id, module.num_image_tokens(data.image_size)
    layouts = {
        "padding": [Collator(pad_id, SkipCounter(), tokens)(s).normalized() for s in samples],
        "packing": [Collator(pad_id, SkipCounter(), tokens, pack_length)(s).normalized()
                    for s in samples],
    }
    times = step_times(module, layouts, args.warmup)
    measured = {name: batches[args.warmup:] for name, batches in layouts.items()}
    real = sum(int(b.attention_mask.sum()) for b in measured["padding"])
    print(f"{args.config}: {args.batches} batches of {data.batch_size}, {real} real tokens, "
          f"pack_length {pack_length}")
    for name, batches in measured.items():
        positions = sum(b.attention_mask.numel() for b in batches)
        median = statistics.median(times[name])
        print(f"{name:8s} positions {positions:7d}  token_efficiency {efficiency(batches):.3f}  "
              f"step {1e3 * median:7.1f} ms  {1e6 * median * args.batches / real:6.1f} us/real token")
    ratio = statistics.median(times["packing"]) / statistics.median(times["padding"])
    print(f"padding_token_efficiency={efficiency(measured['padding']):.3f}")
    print(f"step_time_ratio packing/padding={ratio:.3f} (same samples: also the ratio per real token)")
    print(f"token_efficiency={efficiency(measured['packing']):.3f}")


if __name__ == "__main__":
    main()
