"""Training throughput of a recipe's ETTModule under Lightning vs the same model and optimizer in a plain loop.

Both loops run the same pre-built batches (the data path has its own benchmark), the same weights, the same AdamW
and precision, in one process. Prints images/s, tokens/s, peak memory, FLOPs per step (counted from the ops'
shapes by torch's FlopCounterMode: matmuls, convolutions and attention, forward and backward), MFU against
``--peak-tflops``, and the overhead ratio (Lightning step time / plain step time, medians).

    python benchmarks/throughput.py --config recipes/demo/ett_sft.yaml --image-size 64 --batch-size 8
    python benchmarks/throughput.py --config benchmarks/configs/ett_sft_qwen2.5-1.5b.yaml --image-size 256 \
        --batch-size 16 --accelerator gpu --precision bf16-mixed --peak-tflops 989

Any other ``--key=value`` is a LightningCLI override of the config, e.g.
``--model.init_args.language_model.init_args.config.num_hidden_layers=2``.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
import warnings
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ett_lightning.data.batching.collate import Collator
from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.profiling import HostSyncRecorder
from ett_lightning.training.optimizer import adamw_with_schedule, module_groups

H100_BF16_DENSE_TFLOPS = 989.0


def build(config: str, overrides: list[str]) -> LightningModule:
    """The recipe's model, instantiated exactly as ``lightning fit --config`` would (no trainer, no data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # our own flags are in sys.argv
        cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           run=False, save_config_callback=None,
                           args=["--config", config, "--data.train_shards=null", "--data.val_shards=null", *overrides])
    return cli.model


def make_batches(module, count: int, batch_size: int, image_size: int, device: torch.device) -> list:
    """Random pixels and captions of a realistic length, collated by the real collator, already on ``device``."""
    rng = np.random.default_rng(0)
    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(image_size))
    collate = Collator(module.text_tokenizer.pad_token_id, SkipCounter(), builder.num_image_tokens)
    batches = []
    for index in range(count):
        samples = [{"image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
                    "sequence": builder.build("caption", {}, f"the word sample{index}-{row} written in red on stripes"),
                    "answers": [], "task": "caption", "key": str(row)} for row in range(batch_size)]
        batch = collate(samples).normalized()
        batches.append(module.transfer_batch_to_device(batch, device, 0))
    return batches


def optimizer_for(module, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    config = adamw_with_schedule(module_groups(module), module.betas, module.warmup_steps, total_steps,
                                 module.min_lr_ratio, module.device)
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def autocast(precision: str, device: torch.device):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def plain_step(module, batch, optimizer, scheduler, precision: str, clip: float | None) -> None:
    with autocast(precision, batch.images.device):
        total, _, _ = module.compute_losses(batch)
    total.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def plain_loop(module, batches, precision: str, clip: float | None, device: torch.device) -> list[float]:
    """Seconds per iteration of a hand-written loop (what a user would write without Lightning)."""
    module.to(device).train()
    optimizer, scheduler = optimizer_for(module, len(batches))
    stamps = []
    for batch in batches:
        plain_step(module, batch, optimizer, scheduler, precision, clip)
        synchronize(device)
        stamps.append(time.perf_counter())
    return list(np.diff(stamps))


class StepClock(L.Callback):
    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def lightning_loop(module, batches, precision: str, clip: float | None, accelerator: str,
                   device: torch.device) -> list[float]:
    """Seconds per iteration under ``Trainer.fit``, logging every 10 steps as the demo recipes do."""
    clock = StepClock(device)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=len(batches),
                        gradient_clip_val=clip, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0, log_every_n_steps=10)
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch))
    return list(np.diff(clock.stamps))


def flops_per_step(module, batch, precision: str, clip: float | None) -> int:
    """Model FLOPs of one step (forward + backward), each operation once: activation checkpointing's recomputed
    forward is extra work the hardware does, not model FLOPs, so it is switched off in the copy counted here."""
    module = copy.deepcopy(module)
    module.language_model.model.gradient_checkpointing_disable()
    module.tokenizer.encoder.gradient_checkpointing = module.tokenizer.decoder.gradient_checkpointing = False
    counter = FlopCounterMode(display=False)
    one_step_under(counter, module, batch, precision, clip)
    return counter.get_total_flops()


def host_syncs_per_step(module, batch, precision: str, clip: float | None) -> str:
    """What one plain training step reads back to the host (each read stalls a GPU step)."""
    recorder = HostSyncRecorder()
    one_step_under(recorder, copy.deepcopy(module), batch, precision, clip)
    return recorder.report() or "none"


def one_step_under(mode, module, batch, precision: str, clip: float | None) -> None:
    """One plain step of ``module`` (a copy the caller owns) with a fresh optimizer, inside ``mode``."""
    optimizer, scheduler = optimizer_for(module, 10)
    with mode:
        plain_step(module, batch, optimizer, scheduler, precision, clip)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "GPU peak allocated", torch.cuda.max_memory_allocated() / 2**30
    return "process peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a recipe (its model section is used)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/Lightning rounds (CPU clocks drift)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"device peak for MFU (H100 bf16 dense: {H100_BF16_DENSE_TFLOPS})")
    args, overrides = parser.parse_known_args()

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    module = build(args.config, overrides)
    batches = make_batches(module, args.warmup + args.steps, args.batch_size, args.image_size, device)
    flops = flops_per_step(module.to(device), batches[0], args.precision, args.clip)
    syncs = host_syncs_per_step(module, batches[0], args.precision, args.clip)
    plain, lightning, round_ratios = [], [], []
    for round_index in range(args.rounds):
        runs = [(plain, plain_loop, ()), (lightning, lightning_loop, (args.accelerator,))]
        for times, loop, extra in runs if round_index % 2 == 0 else runs[::-1]:
            fresh = copy.deepcopy(module)
            times.append(loop(fresh, batches, args.precision, args.clip, *extra, device)[args.warmup:])
        round_ratios.append(statistics.median(lightning[-1]) / statistics.median(plain[-1]))

    step_plain = statistics.median(t for times in plain for t in times)
    step_lightning = statistics.median(t for times in lightning for t in times)
    tokens = statistics.mean(int(b.attention_mask.sum()) for b in batches)
    memory_label, memory = peak_memory_gib(device)
    print(f"recipe {args.config}  stage {module.stage}  batch {args.batch_size} x {args.image_size}px  "
          f"{tokens / args.batch_size:.0f} tokens/sample  precision {args.precision}  device {device}")
    for name, step in (("plain loop", step_plain), ("lightning ", step_lightning)):
        mfu = f"{flops / step / (args.peak_tflops * 1e12):6.1%}" if args.peak_tflops else "n/a"
        print(f"{name}: {step * 1e3:8.1f} ms/step  {args.batch_size / step:8.1f} images/s  {tokens / step:9.0f} "
              f"tokens/s  {flops / step / 1e12:7.3f} TFLOP/s  MFU {mfu}")
    print(f"FLOPs/step {flops / 1e9:.2f} G   {memory_label} {memory:.2f} GiB")
    print(f"host syncs in one step:\n{syncs}")
    print(f"overhead ratio lightning / plain: {step_lightning / step_plain:.3f}  (target <= 1.03); per round: "
          + " ".join(f"{ratio:.3f}" for ratio in round_ratios))


if __name__ == "__main__":
    main()
