"""Two gloo processes per stage, from the demo recipes (and with the adversarial loss on): every rank ends with
the same parameters, without find_unused_parameters."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))
RECIPES = {"tokenizer": "tokenizer", "align": "ett_align", "ett": "ett_sft", "posttrain": "ett_posttrain",
           "tokenizer_gan": "tokenizer", "ett_gan": "ett_sft"}
GAN = ["--model.init_args.loss.init_args.adversarial_weight=0.1"]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("stage", list(RECIPES))
def test_two_process_ddp_keeps_ranks_identical(tmp_path, synthetic_shards, stage):
    (tmp_path / "ddp.yaml").write_text(textwrap.dedent(f"""
        trainer:
          callbacks:
            - class_path: tests.distributed.rank_digest.SaveRankParameters
              init_args: {{directory: {tmp_path / 'ranks'}}}
    """))
    task = "vqa" if stage == "posttrain" else "caption"
    result = subprocess.run(
        [LIGHTNING, "fit", "--config", str(ROOT / f"recipes/demo/{RECIPES[stage]}.yaml"), "--config", "ddp.yaml",
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=3",
         "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
         f"--data.train_shards={synthetic_shards}/{task}/train-*.tar", "--data.val_shards=null",
         "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
         "--model.init_args.tokenizer.init_args.image_size=32", *(GAN if stage.endswith("_gan") else [])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 3 for r in ranks)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
