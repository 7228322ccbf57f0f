"""The paper-scale recipes (``recipes/ett_*.yaml``) as a user runs them, chained align -> ETT (with the adversarial
loss on) -> post-training (and text-to-image from the ETT checkpoint; from the align checkpoint, the 7B recipes:
ETT sharded and ETT with LoRA, exported merged and asked a question), under 2 gloo processes (started by
``torchrun -m ett_lightning``) in their own precision: align and text-to-image sharded
(``--trainer.strategy=fsdp2``), the 7B recipes under their own strategies (FSDP2 with bf16 weights and activation
checkpointing; DDP), the others under DDP.

Only what a CPU cannot hold or this machine cannot download is replaced: the placeholders get a tiny IBQ-layout
tokenizer checkpoint, a tiny Hugging Face model directory and synthetic shards; sizes, steps and cadences shrink
to match; LPIPS keeps its weight of 1.0 on a random VGG (no weights file offline) and rFID is off (no Inception
weights offline). Everything else (strategy, precision, clipping, callbacks, checkpoints, logger) is the recipe's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from ett_lightning import IndexBackpropQuantizer, VQTokenizer
from ett_lightning.commands.ett import main as ett_main
from ett_lightning.experiments.runs import set_dotted
from ett_lightning.models.lora import is_adapter, plain_name
from ett_lightning.tokenizer import from_ett
from tests.chat_model import make_chat_model_dir
from tests.cli_runs import ROOT, run_torchrun
from tests.distributed.rank_digest import rank_digest

IMAGE_SIZE, CODES, CODE_DIM, LLM_HIDDEN, STEPS = 32, 16, 8, 64, 2
TOKENIZER = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "resolution": IMAGE_SIZE,
             "z_channels": 32}
PLACEHOLDER = re.compile(r"<[A-Z0-9_]+>")


def ibq_checkpoint(path: Path) -> Path:
    """A tokenizer checkpoint in the IBQ repository's layout (``state_dict`` of taming-style keys)."""
    torch.manual_seed(0)
    tokenizer = VQTokenizer(IndexBackpropQuantizer(codebook_size=CODES, code_dim=CODE_DIM), **TOKENIZER)
    torch.save({"state_dict": from_ett(tokenizer.state_dict(), "ibq")}, path)
    return path


def filled_recipe(name: str, out: Path, overrides: dict[str, Any]) -> Path:
    """``recipes/<name>.yaml`` with ``overrides`` (dotted keys) and the test's sizes applied, written to ``out``;
    fails if a placeholder is left, so a recipe that gains one needs this test to fill it."""
    config = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    sizes = {"trainer.max_steps": STEPS, "trainer.val_check_interval": 2, "trainer.limit_val_batches": 2,
             "trainer.log_every_n_steps": 1, "trainer.default_root_dir": str(out.parent / name),
             "data.init_args.batch_size": 2, "data.init_args.num_workers": 1, "data.init_args.image_size": IMAGE_SIZE,
             "data.init_args.shuffle_buffer": 8, "data.init_args.samples_per_epoch": 64,
             "model.init_args.projector.init_args.in_dim": CODE_DIM,
             "model.init_args.projector.init_args.out_dim": LLM_HIDDEN,
             "model.init_args.warmup_steps": 1}
    for key, value in {**sizes, **overrides}.items():
        set_dotted(config, key, value)
    for callback in config["trainer"]["callbacks"]:
        arguments = callback.get("init_args", {}) if isinstance(callback, dict) else {}
        if callback_class(callback).endswith(("ReconstructionMetrics", "GenerationMetrics")):
            arguments.update(fid=False, fid_weights=None)
        if "every_n_train_steps" in arguments:
            arguments["every_n_train_steps"] = 1
    left = PLACEHOLDER.findall(yaml.safe_dump(config))
    assert not left, f"recipes/{name}.yaml has placeholders this test does not fill: {left}"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def callback_class(callback: str | dict) -> str:
    return callback if isinstance(callback, str) else callback["class_path"]


def tokenizer_sizes(prefix: str = "model.init_args.tokenizer.init_args") -> dict[str, Any]:
    sizes = {f"{prefix}.{key}": value for key, value in TOKENIZER.items()}
    sizes[f"{prefix}.quantizer.init_args.codebook_size"] = CODES
    sizes[f"{prefix}.quantizer.init_args.code_dim"] = CODE_DIM
    return sizes


def tokenizer_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("tokenizer.")}


@pytest.mark.slow
@pytest.mark.ddp
def test_paper_recipes_chain_under_two_processes_in_bf16(tmp_path, synthetic_shards, capsys):
    llm = make_chat_model_dir(tmp_path / "llm", hidden_size=LLM_HIDDEN)
    common = {"model.init_args.language_model.init_args.pretrained": str(llm)}

    def shards(task: str) -> dict[str, str]:
        return {"data.init_args.train_shards": f"{synthetic_shards}/{task}/train-*.tar",
                "data.init_args.val_shards": f"{synthetic_shards}/{task}/val-*.tar"}

    align = {**common, **shards("caption"),
             "model.init_args.tokenizer.init_args.weights": str(ibq_checkpoint(tmp_path / "ibq.ckpt")),
             "model.init_args.tokenizer.init_args.resolution": IMAGE_SIZE,
             "model.init_args.tokenizer.init_args.quantizer.init_args.codebook_size": CODES,
             "model.init_args.tokenizer.init_args.quantizer.init_args.code_dim": CODE_DIM}
    stage1 = tmp_path / "ett_align" / "checkpoints" / "last.ckpt"
    ett = {**common, **shards("caption"), **tokenizer_sizes(), "model.init_args.init_from": str(stage1),
           "model.init_args.loss.init_args.perceptual.init_args.backbone_weights": None,
           "model.init_args.loss.init_args.perceptual.init_args.random_backbone": True}
    stage2 = tmp_path / "ett_sft" / "checkpoints" / "last.ckpt"
    posttrain = {**common, **shards("vqa"), **tokenizer_sizes(), "model.init_args.init_from": str(stage2)}
    t2i = {**common, **shards("caption"), **tokenizer_sizes(), "model.init_args.init_from": str(stage2),
           "model.init_args.image_size": IMAGE_SIZE,
           "data.init_args.predict_prompts": ["a red square", "the text cat in blue"]}
    gan = {**ett, "model.init_args.loss.init_args.adversarial_weight": 0.1}  # the recipe's documented GAN option
    runs = (("ett_align", align, "fsdp2"), ("ett_sft", gan, "ddp"), ("ett_posttrain", posttrain, "ddp"),
            ("ett_t2i", t2i, "fsdp2"), ("ett_sft_7b", ett, None), ("ett_sft_7b_lora", ett, None))
    metrics = {}
    for name, overrides, strategy in runs:  # None: the recipe's own strategy
        config = filled_recipe(name, tmp_path / f"{name}.yaml", overrides)
        ranks = tmp_path / f"{name}_ranks"
        launch = ["--trainer.accelerator=cpu", "--trainer.devices=2"]
        launch += [f"--trainer.strategy={strategy}"] if strategy else []
        run_torchrun(["fit", "--config", str(config), *launch, *rank_digest(ranks)], cwd=tmp_path, timeout=300)
        digests = [torch.load(ranks / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert all(d["world_size"] == 2 and d["step"] == STEPS for d in digests)
        assert all(torch.equal(v, digests[1]["params"][k]) for k, v in digests[0]["params"].items()), name
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu",
                                weights_only=False)
        assert checkpoint["global_step"] == STEPS

    assert all("val/psnr" in metrics[name] for name in ("ett_align", "ett_sft", "ett_sft_7b"))
    assert "val/vqa_acc" in metrics["ett_posttrain"] and "val/image_tokens" in metrics["ett_t2i"]
    assert {"train/d_loss", "train/g_adv"} <= metrics["ett_sft"].keys(), "the discriminator did not train"
    samples = sorted(p.name for p in (tmp_path / "ett_t2i" / "samples").iterdir())
    assert samples == [f"step_{STEPS:07d}.png", f"step_{STEPS:07d}.txt"], samples
    tuned, aligned = tokenizer_state(stage2), tokenizer_state(stage1)
    assert any(not torch.equal(tuned[k], aligned[k]) for k in aligned), "stage 2 left the tokenizer untouched"
    after = tokenizer_state(tmp_path / "ett_posttrain" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(after[k], tuned[k]) for k in tuned), "post-training changed the frozen tokenizer"
    assert_lora_run(tmp_path, stage1, tmp_path / "ett_sft_7b_lora" / "checkpoints" / "last.ckpt", capsys)


def assert_lora_run(tmp_path: Path, stage1: Path, checkpoint: Path, capsys) -> None:
    """The LoRA recipe left the LLM's own weights as stage 1 had them (in bf16) and trained its adapters; its export
    holds the LLM with ``W + (alpha / rank) B A`` folded in, and ``ett ask`` answers with it."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    aligned = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    llm = {k: v for k, v in state.items() if k.startswith("language_model.model.")}
    adapters = {k: v for k, v in llm.items() if is_adapter(k)}
    assert adapters and all(torch.count_nonzero(v) for k, v in adapters.items() if "lora_B" in k), "adapters idle"
    for key, value in llm.items():
        if key not in adapters:
            plain = "language_model." + plain_name(key.removeprefix("language_model."))
            assert value.dtype == torch.bfloat16 and torch.equal(value, aligned[plain].to(torch.bfloat16)), key

    out = tmp_path / "lora_export"
    ett_main(["export", "--ckpt", str(checkpoint), "--out", str(out)])
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = load_file(out / "language_model" / "model.safetensors")
    assert not any(is_adapter(k) or "base_layer" in k for k in merged)
    layer = "language_model.model.base_model.model.model.layers.0.self_attn.q_proj"
    scale = 32 / 16  # the recipe's alpha / rank
    delta = scale * state[f"{layer}.lora_B.default.weight"] @ state[f"{layer}.lora_A.default.weight"]
    expected = (state[f"{layer}.base_layer.weight"].float() + delta).to(torch.bfloat16)
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected, rtol=0, atol=0)

    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 30, 30)).save(tmp_path / "red.png")
    capsys.readouterr()
    ett_main(["ask", "--export", str(out), "--image", str(tmp_path / "red.png"), "--question", "What colour?",
              "--device", "cpu"])
    assert len(capsys.readouterr().out.splitlines()) == 1, "ett ask printed no answer line"
