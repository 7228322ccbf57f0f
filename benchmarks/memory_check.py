"""benchmarks/memory.py's estimate against what training really holds per rank, on a small config of the same
architecture (a 256-wide, 4-layer Qwen2 and a 64 px VQGAN with the IBQ quantizer, LPIPS on a random VGG) trained
by ``lightning fit`` under 2 CPU processes: DDP in bf16-mixed and FSDP2 with bf16 weights (as the 7B recipes), each
with and without activation checkpointing. benchmarks/memory_probe.py measures step 2 of each rank; the estimate
is computed for the batch that step really had (its LLM tokens and images).

Printed per case (the larger of the two ranks' figures, MB): weights, AdamW states and gradients held by the
rank, and the step's peak above what it held when it began (activations, gathered units, gradients,
temporaries) against the estimate's gradients + extra + activations; DDP's gradient buckets exist before the step
and are in neither figure. A ratio under 1 means the estimate is above what was measured.

    python benchmarks/memory_check.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import CONFIG, LLM, build_on_meta, llm_activations, per_rank, tokenizer_activations  # noqa: E402

from ett_lightning.convert.synthetic import make_shards  # noqa: E402

TOKENIZER = "--model.init_args.tokenizer.init_args"
IMAGE_SIZE = 64
SMALL = [f"{LLM}.config.hidden_size=256", f"{LLM}.config.intermediate_size=704", f"{LLM}.config.num_hidden_layers=4",
         f"{LLM}.config.num_attention_heads=4", f"{LLM}.config.num_key_value_heads=2", f"{LLM}.config.vocab_size=4096",
         "--model.init_args.projector.init_args.out_dim=256", f"{TOKENIZER}.ch=32", f"{TOKENIZER}.ch_mult=[1,2,2]",
         f"{TOKENIZER}.num_res_blocks=1", f"{TOKENIZER}.attn_resolutions=[16]", f"{TOKENIZER}.resolution={IMAGE_SIZE}",
         f"{TOKENIZER}.quantizer.init_args.codebook_size=1024"]
STRATEGIES = {
    "DDP": ["--trainer.strategy=ddp", "--trainer.precision=bf16-mixed"],
    "FSDP2": ["--trainer.strategy=ett_lightning.distributed.FSDP2Strategy", "--trainer.strategy.param_dtype=bfloat16",
              "--trainer.precision=32-true"],
}
CHECKPOINTING = {
    "DDP": [f"{LLM}.gradient_checkpointing=true", f"{TOKENIZER}.gradient_checkpointing=true"],
    "FSDP2": ["--trainer.strategy.activation_checkpointing=true"],
}
MB = 1e6


def measure(strategy: str, checkpointed: bool, shards: Path, out: Path, batch_size: int) -> list[dict]:
    """Each rank's figures from a 3-step 2-process ``lightning fit`` of the small config."""
    probe = out / f"{strategy}_{checkpointed}"
    args = ["fit", "--config", CONFIG, *SMALL, *STRATEGIES[strategy], *(CHECKPOINTING[strategy] * checkpointed),
            f"--data.train_shards={shards}/caption/train-*.tar", f"--data.init_args.image_size={IMAGE_SIZE}",
            f"--data.init_args.batch_size={batch_size}", "--data.init_args.num_workers=1",
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_steps=3",
            "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={probe / 'run'}", "--trainer.callbacks+=memory_probe.MemoryProbe",
            f"--trainer.callbacks.directory={probe}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    probe.mkdir(parents=True)
    with open(probe / "output.txt", "w") as log:
        run = subprocess.run([str(Path(sys.executable).with_name("lightning")), *args], env=env, stdout=log,
                             stderr=subprocess.STDOUT, timeout=900)
    if run.returncode != 0:
        raise SystemExit(f"{strategy} run failed:\n{(probe / 'output.txt').read_text()[-4000:]}")
    return [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def estimate(strategy: str, checkpointed: bool, tokens: int, images: int) -> dict[str, float]:
    for name in ("lightning.pytorch", "lightning.fabric"):  # building the model prints the seed
        logging.getLogger(name).setLevel(logging.WARNING)
    module = build_on_meta(SMALL)
    activations = (llm_activations(module.language_model.causal_lm.config, tokens)[checkpointed]
                   + tokenizer_activations(images, checkpointed, tuple(SMALL), IMAGE_SIZE))
    return per_rank(module, strategy, 2, activations)


def row(name: str, predicted: float, measured: float) -> str:
    return f"| {name} | {predicted / MB:.1f} | {measured / MB:.1f} | {measured / predicted:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4, help="images per rank per step")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        shards = make_shards(out / "shards", num_train=64, num_val=0, image_size=IMAGE_SIZE, samples_per_shard=16,
                             seed=0)
        for strategy in STRATEGIES:
            for checkpointed in (False, True):
                ranks = measure(strategy, checkpointed, shards, out, options.batch_size)
                worst = {key: max(rank[key] for rank in ranks) for key in ranks[0]}
                parts = estimate(strategy, checkpointed, worst["tokens"], worst["images"])
                transient = parts["gradients"] + parts["activations"] + (parts["extra"] if strategy == "FSDP2" else 0)
                print(f"\n{strategy} x2, activation checkpointing {'on' if checkpointed else 'off'}, "
                      f"{worst['images']} images and {worst['tokens']} LLM tokens per rank\n"
                      "| per rank | estimate (MB) | measured (MB) | measured / estimate |\n|---|---|---|---|")
                print("\n".join([row("weights", parts["weights"], worst["weights"]),
                                 row("AdamW states", parts["adam"], worst["adam"]),
                                 row("gradients", parts["gradients"], worst["gradients"]),
                                 row("step peak above the states", transient, worst["peak_step"]),
                                 row("total", parts["weights"] + parts["adam"] + transient,
                                     worst["weights"] + worst["adam"] + worst["peak_step"])]))


if __name__ == "__main__":
    main()
