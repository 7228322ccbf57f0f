"""Where a training step's time goes: data, each component's forward and backward, the losses, the optimizer.

Builds the recipe's model and data module exactly as ``lightning fit --config`` would, takes real batches from its
train loader, and runs the step by hand in phases, each timed on its own (CPU: every op is synchronous; GPU: the
device is synchronised around each phase). The backward is split without changing its result: the image
embeddings are cut from the tokenizer's graph, the caption loss (LLM, projector) and the tokenizer's reconstruction
terms (decoder, pixel losses) backpropagate into the cut, then the encoder and quantizer backpropagate what reached
it. The parameters receive the same gradients as from ``total.backward()``; the printed "whole step" is timed
separately, as one ``compute_losses`` + ``backward`` + optimizer step, to show the phases add up.

    python benchmarks/step_profile.py --config recipes/demo/ett_sft.yaml                 # the ETT arm's step
    python benchmarks/step_profile.py --config recipes/demo/ett_sft.yaml \\
        --model.init_args.trainable.tokenizer=false                                      # the frozen arm's step

Lightning's own cost per step is ``benchmarks/throughput.py``'s overhead ratio; validation, checkpoints and
callbacks are measured on a real fit with ``--trainer.profiler=simple`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch import LightningModule
from throughput import optimizer_for  # this folder's benchmarks: the optimizer configure_optimizers builds
from token_efficiency import build  # the recipe's model and data module, as lightning fit builds them


class PhaseClock:
    """Milliseconds of each named phase, per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        self.times[name].append(1e3 * (time.perf_counter() - start))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def phased_step(module: LightningModule, batch, clock: PhaseClock, step: Callable[[], None]) -> None:
    """One training step of ``module.compute_losses``'s objective, in timed phases."""
    loss = module.loss
    tuning = module.is_trainable("tokenizer")
    with clock("tokenizer encode forward"):
        encoded = module.encode_images(batch.images)
    cut = encoded.embeddings.detach().requires_grad_(tuning)
    with clock("LLM + projector forward"):
        caption = loss.caption_weight * module.caption_loss(batch, module.projector(cut))
    if tuning:
        with clock("tokenizer decode forward"):
            reconstructions = module.tokenizer.decode(cut)
        with clock("reconstruction losses forward"):
            pixels, _ = loss.vq_loss(batch.images, reconstructions, {}, loss.last_layer_of(module.tokenizer),
                                     module.global_step)
    with clock("LLM + projector backward"):
        caption.backward()
    if tuning:
        with clock("tokenizer decode + losses backward"):
            (loss.alpha * pixels).backward()
        with clock("tokenizer encode backward"):
            quantizer = loss.alpha * loss.quantizer_weight * encoded.quant_losses["quantizer"]
            torch.autograd.backward([encoded.embeddings, quantizer], [cut.grad, None])
    with clock("optimizer (clip, AdamW, schedule)"):
        step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a recipe (model and data sections are used)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args, overrides = parser.parse_known_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    module, data = build(args.config, overrides)
    module.to(device).train()
    data.attach(module.text_tokenizer, module.num_image_tokens(data.image_size), module.sequence_layout)
    data.setup("fit")
    clock = PhaseClock(device)
    loader = iter(data.train_dataloader())
    batches = []
    for _ in range(2 * (args.warmup + args.steps)):
        with clock("data (next batch, loader workers)"):
            batches.append(module.transfer_batch_to_device(next(loader), device, 0).normalized())
    optimizer, scheduler = optimizer_for(module, len(batches))
    clip = 1.0

    def step() -> None:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    whole = []
    for index, batch in enumerate(batches):
        if index % 2 == 0:
            phased_step(module, batch, clock, step)
            continue
        start = time.perf_counter()
        total, _, _ = module.compute_losses(batch)
        total.backward()
        step()
        clock.synchronize()
        whole.append(1e3 * (time.perf_counter() - start))

    skip = args.warmup
    medians = {name: statistics.median(times[skip:]) for name, times in clock.times.items()}
    data_ms = medians.pop("data (next batch, loader workers)")
    compute = sum(medians.values())
    tokens = statistics.mean(int(b.attention_mask.sum()) for b in batches)
    print(f"recipe {args.config}  tokenizer {'trains' if module.is_trainable('tokenizer') else 'frozen'}  "
          f"batch {len(batches[0])} images, {tokens:.0f} LLM tokens  device {device}  "
          f"torch threads {torch.get_num_threads()}  median of {args.steps} steps")
    for name, ms in medians.items():
        print(f"  {name:<38} {ms:8.1f} ms  {ms / compute:6.1%}")
    print(f"  {'sum of the phases':<38} {compute:8.1f} ms")
    print(f"  {'whole step (one backward)':<38} {statistics.median(whole[skip:]):8.1f} ms")
    print(f"  {'data: next batch (not overlapped)':<38} {data_ms:8.1f} ms")


if __name__ == "__main__":
    main()
