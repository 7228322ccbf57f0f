"""Export then import reproduces the tuned model exactly, including the tokenizer's original checkpoint layout."""

import json
from pathlib import Path

import pytest
import torch

from ett_lightning import ETTLoss, ETTModule, PretrainedVQTokenizer
from ett_lightning.checkpoints.export import EXPORT_FILE, ORIGINAL_FILES, export_module
from ett_lightning.commands.ett import main as ett_main
from ett_lightning.tokenizer import VectorQuantizer, from_ett
from tests.conftest import IMAGE_SIZE, make_batch, tiny_module, tiny_tokenizer

NO_LPIPS = ETTLoss(perceptual_weight=0.0)


def outputs(module: ETTModule, batch) -> dict[str, torch.Tensor]:
    module.eval()
    with torch.no_grad():
        encoded = module.tokenizer.encode(batch.images)
        embeds = module.projector(encoded.embeddings)
        logits = module.language_model(batch.input_ids, batch.attention_mask, embeds, batch.image_slots).logits
        return {"indices": encoded.indices, "reconstruction": module.tokenizer.decode(encoded.embeddings),
                "projected": embeds, "logits": logits}


def test_export_then_from_export_gives_identical_outputs(tmp_path):
    module = tiny_module("posttrain")
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    batch = make_batch(module, batch_size=2)
    export_module(module, tmp_path / "export")
    reloaded = ETTModule.from_export(str(tmp_path / "export"), loss=NO_LPIPS)
    assert reloaded.stage == "posttrain"
    assert ETTModule.from_export(str(tmp_path / "export"), stage="ett", loss=NO_LPIPS).stage == "ett"
    expected, actual = outputs(module, batch), outputs(reloaded, batch)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert reloaded.text_tokenizer.get_vocab() == module.text_tokenizer.get_vocab()
    manifest = json.loads((tmp_path / "export" / EXPORT_FILE).read_text())
    assert manifest["tokenizer"]["quantizer"]["class_path"].endswith("IndexBackpropQuantizer")


@pytest.mark.parametrize("fmt", ["taming", "llamagen"])
def test_tuned_tokenizer_is_also_written_in_the_layout_it_came_from(tmp_path, fmt):
    torch.manual_seed(1)
    source = tiny_tokenizer(VectorQuantizer, l2_norm=fmt == "llamagen")
    key = "model" if fmt == "llamagen" else "state_dict"
    torch.save({key: from_ett(source.state_dict(), fmt)}, tmp_path / "public.ckpt")
    module = tiny_module()
    module.tokenizer = PretrainedVQTokenizer(str(tmp_path / "public.ckpt"), format=fmt, resolution=IMAGE_SIZE)
    export_module(module, tmp_path / "export")
    original = tmp_path / "export" / "tokenizer" / ORIGINAL_FILES[fmt][0]
    again = PretrainedVQTokenizer(str(original), format=fmt, resolution=IMAGE_SIZE)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(images)[0], source(images)[0])


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory written by `ett export`"):
        ETTModule.from_export(str(tmp_path), loss=NO_LPIPS)


@pytest.mark.slow
def test_ett_export_command_from_a_cli_checkpoint(tmp_path, synthetic_shards, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ett_main(["fit", "--config", str(Path(__file__).parents[2] / "recipes/demo/ett_sft.yaml"),
              f"--data.train_shards={synthetic_shards}/caption/train-*.tar", "--data.val_shards=null",
              "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=2",
              "--data.init_args.num_workers=0", "--data.init_args.image_size=32",
              "--model.init_args.tokenizer.init_args.image_size=32"])
    checkpoint = tmp_path / "outputs/demo/ett_sft/checkpoints/last.ckpt"
    ett_main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "export")])
    trained = ETTModule.load_from_checkpoint(checkpoint)
    exported = ETTModule.from_export(str(tmp_path / "export"), loss=NO_LPIPS)
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in trained.state_dict().items()
               if not k.startswith("loss."))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        ett_main(["export", "--ckpt", str(checkpoint), "--out", str(tmp_path / "again"), "--tokenizer-format", "ibq"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert refused.value.code == 2 and "'ibq' holds a VQTokenizer" in line and "a ViTVQTokenizer" in line
    assert not (tmp_path / "again").exists()  # refused before anything was written
