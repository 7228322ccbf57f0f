"""The console scripts as users type them: print_config on the real recipes, a short demo chain on CPU."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ett_lightning import ETTModule

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))
FAST = ["--trainer.max_steps=2", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([LIGHTNING, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "module"), [("ett_align", "ETTModule"), ("ett_sft", "ETTModule"),
                                               ("ett_posttrain", "ETTModule"), ("ett_t2i", "tasks.TextToImage")])
def test_real_recipes_print_their_resolved_config(recipe, module):
    out = run("fit", "--config", f"recipes/{recipe}.yaml", "--print_config", cwd=ROOT).stdout
    assert f"class_path: ett_lightning.{module}" in out and "codebook_size: 131072" in out


@pytest.mark.slow
def test_demo_chain_runs_and_checkpoints_reload(tmp_path, synthetic_shards):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(synthetic_shards, tmp_path / "data" / "synthetic")
    small = ["--model.init_args.tokenizer.init_args.image_size=32", "--data.init_args.image_size=32"]
    run("fit", "--config", "recipes/demo/tokenizer.yaml", *FAST, *small, cwd=tmp_path)
    tokenizer_ckpt = tmp_path / "outputs/demo/tokenizer/checkpoints/last.ckpt"
    run("fit", "--config", "recipes/demo/ett_align.yaml", *FAST, *small,
        f"--model.init_args.init_from={tokenizer_ckpt}", cwd=tmp_path)
    align_ckpt = tmp_path / "outputs/demo/ett_align/checkpoints/last.ckpt"
    run("fit", "--config", "recipes/demo/ett_sft.yaml", *FAST, *small,
        f"--model.init_args.init_from={align_ckpt}", cwd=tmp_path)
    sft_ckpt = tmp_path / "outputs/demo/ett_sft/checkpoints/last.ckpt"
    module = ETTModule.load_from_checkpoint(sft_ckpt)
    saved = torch.load(sft_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert module.stage == "ett" and all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    pretrained = torch.load(tokenizer_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    align = torch.load(align_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(pretrained["tokenizer.quantize.embedding.weight"], align["tokenizer.quantize.embedding.weight"])
    patch_embed = "tokenizer.encoder.vit.patch_embed.proj.weight"
    assert not torch.equal(align[patch_embed], saved[patch_embed])
    run("validate", "--config", "recipes/demo/ett_posttrain.yaml", "--trainer.limit_val_batches=1", *small,
        f"--ckpt_path={sft_ckpt}", "--data.init_args.num_workers=0", cwd=tmp_path)
    run("predict", "--config", "recipes/demo/ett_posttrain.yaml", "--trainer.limit_predict_batches=1", *small,
        f"--ckpt_path={sft_ckpt}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=2", cwd=tmp_path)

    t2i = [*small, "--model.init_args.image_size=32", "--data.init_args.num_workers=0"]
    run("fit", "--config", "recipes/demo/t2i.yaml", *FAST, *t2i, f"--model.init_args.init_from={sft_ckpt}",
        cwd=tmp_path)
    run("predict", "--config", "recipes/demo/t2i.yaml", *t2i, "--ckpt_path=outputs/demo/t2i/checkpoints/last.ckpt",
        cwd=tmp_path)
    written = sorted((tmp_path / "outputs/demo/t2i/predictions").glob("*.png"))
    prompts = (ROOT / "recipes/demo/prompts.txt").read_text().splitlines()
    assert len([p for p in written if not p.name.startswith("grid_")]) == len(prompts)


def write_img2dataset_shards(directory: Path, shards: int = 2, per_shard: int = 6) -> str:
    """Shards as img2dataset writes them: ``{shard:05d}{index:04d}`` keys with jpg, txt and json members, JPEGs
    of mixed sizes and modes."""
    import io
    import json
    import tarfile

    from PIL import Image

    directory.mkdir()
    for shard in range(shards):
        with tarfile.open(directory / f"{shard:05d}.tar", "w") as tar:
            for index in range(per_shard):
                key = f"{shard:05d}{index:04d}"
                jpg = io.BytesIO()
                Image.new("RGB" if index % 2 else "L", (40 + 8 * index, 36), (index * 40) % 256).save(jpg, "JPEG")
                caption = f"a flat picture number {index}"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "width": 40 + 8 * index, "height": 36}
                for ext, data in (("jpg", jpg.getvalue()), ("txt", caption.encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory / f"{{00000..{shards - 1:05d}}}.tar")


@pytest.mark.slow
def test_fit_streams_img2dataset_layout_shards(tmp_path):
    shards = write_img2dataset_shards(tmp_path / "laion")
    result = run("fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"), f"--data.train_shards={shards}",
                 "--data.val_shards=null", "--trainer.max_steps=5", "--trainer.limit_val_batches=0",
                 "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
                 "--model.init_args.tokenizer.init_args.image_size=32", cwd=tmp_path)
    checkpoint = torch.load(tmp_path / "outputs/demo/ett_sft/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 5, result.stderr[-2000:]
