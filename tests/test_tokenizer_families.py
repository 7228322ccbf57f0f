"""ETT through the implicit-codebook families: the caption loss reaches the encoder through LFQ's sign and FSQ's
rounding as through VQ, there is no codebook to tune, stage 2 trains with the health checks on, and an export of the
tuned model reloads exactly and answers through ``ett ask``."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector
from ett_lightning.checkpoints.export import EXPORT_FILE, export_module
from ett_lightning.evaluation import InferenceModel
from ett_lightning.evaluation.ask import main as ask_main
from ett_lightning.health import TokenizerGuard, TokenizerHealth
from ett_lightning.models.generation import Decoding
from ett_lightning.tokenizer import FiniteScalarQuantizer, LookupFreeQuantizer, MAGVIT2Tokenizer, VQTokenizer
from ett_lightning.user_errors import UserError
from tests.checkpoints.test_export import outputs
from tests.conftest import IMAGE_SIZE, TINY_LLM, fit, make_batch, tiny_module

FAMILIES = {
    "open-magvit2 lfq": lambda: MAGVIT2Tokenizer(LookupFreeQuantizer(6), ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                                 resolution=IMAGE_SIZE),
    "conv fsq": lambda: VQTokenizer(FiniteScalarQuantizer([5, 4, 3]), ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                    attn_resolutions=(8,), resolution=IMAGE_SIZE, z_channels=16),
}


def family_module(name: str, stage: str = "ett", **kwargs) -> ETTModule:
    torch.manual_seed(0)
    tokenizer = FAMILIES[name]()
    return tiny_module(stage, tokenizer=tokenizer, projector=MLPProjector(tokenizer.code_dim, 32), **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_caption_loss_alone_reaches_the_encoder_and_nothing_is_a_codebook(family):
    module = family_module(family)
    batch = make_batch(module)
    encoded = module.encode_images(batch.images)
    module.caption_loss(batch, module.projector(encoded.embeddings)).backward()
    tokenizer = module.tokenizer
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    assert list(tokenizer.quantize.parameters()) == [] and not tokenizer.quantize.learned_codebook
    assert all(p.grad is None for p in tokenizer.decoder.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_2_trains_with_the_health_checks_and_the_export_reloads_exactly_and_answers(family, tmp_path, capsys):
    module = family_module(family)
    start = {k: v.clone() for k, v in module.tokenizer.encoder.state_dict().items()}
    health = TokenizerHealth(every_n_steps=1, num_probe_images=2)
    trainer = fit(module, steps=2, callbacks=[health], default_root_dir=tmp_path)
    assert any(not torch.equal(v, start[k]) for k, v in module.tokenizer.encoder.state_dict().items())
    metrics = trainer.callback_metrics
    assert "health/probe_usage_ratio" in metrics and "health/encoder_drift" in metrics
    assert "health/codebook_drift" not in metrics  # the codes are computed, not trained

    export_module(module, tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / EXPORT_FILE).read_text())
    assert manifest["tokenizer"]["quantizer"]["class_path"].endswith(type(module.tokenizer.quantize).__name__)
    reloaded = ETTModule.from_export(str(tmp_path / "export"), loss=ETTLoss(perceptual_weight=0.0))
    batch = make_batch(module)
    expected, actual = outputs(module, batch), outputs(reloaded, batch)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name

    if family != "open-magvit2 lfq":  # `ett ask` reads every export through the same loader: asked once
        return
    image = tmp_path / "q.png"
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "red").save(image)
    ask_main(["--export", str(tmp_path / "export"), "--image", str(image), "--question", "What colour?",
              "--max-new-tokens", "4"])
    expected = InferenceModel.from_export(str(tmp_path / "export")).answer(
        [Image.open(image)], ["What colour?"], Decoding(max_new_tokens=4))[0]
    assert capsys.readouterr().out == expected + "\n"


def test_dead_code_restarts_are_refused_for_a_computed_codebook(tmp_path):
    guard = TokenizerGuard(every_n_steps=1, num_probe_images=2, restart_dead_codes=True)
    with pytest.raises(UserError, match="restart_dead_codes needs a learned codebook"):
        fit(family_module("open-magvit2 lfq"), steps=1, callbacks=[guard], default_root_dir=tmp_path)


def test_text_to_image_refuses_an_index_space_its_image_head_cannot_hold():
    from ett_lightning.tasks import TextToImage

    tokenizer = MAGVIT2Tokenizer(LookupFreeQuantizer(18), ch=16, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    with pytest.raises(ValueError, match="up to 131072 codes are supported"):
        TextToImage(tokenizer=tokenizer, projector=MLPProjector(18, 32), language_model=LanguageModel(config=TINY_LLM),
                    loss=ETTLoss(perceptual_weight=0.0))


def test_a_codebook_learning_rate_is_refused_where_there_is_no_codebook(tmp_path):
    module = family_module("conv fsq", learning_rates={"tokenizer": 1e-4, "projector": 1e-3, "language_model": 1e-5,
                                                       "codebook": 1e-5})
    with pytest.raises(UserError, match="learning_rates.codebook: the FiniteScalarQuantizer .* has no codebook"):
        fit(module, steps=1, default_root_dir=tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_to_image_predicts_the_familys_indices_and_its_loss_reaches_the_encoder(family):
    from ett_lightning.tasks import TextToImage
    from tests.tasks.test_text_to_image import prompt_batch, t2i_batch

    torch.manual_seed(0)
    tokenizer = FAMILIES[family]()
    module = TextToImage(tokenizer, MLPProjector(tokenizer.code_dim, 32), LanguageModel(config=TINY_LLM),
                         loss=ETTLoss(perceptual_weight=0.0), image_size=IMAGE_SIZE, stage="ett")
    assert module.image_head.out_features == tokenizer.codebook_size
    _, parts, _ = module.train().compute_losses(t2i_batch(module))
    parts["image_tokens"].backward()
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    images, _ = module.eval().generate_images(prompt_batch(module), seed=1)
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("family", [*FAMILIES, "vq"])
def test_indices_outside_the_codebook_are_refused_not_turned_into_other_codes(family):
    tokenizer = family_module(family).tokenizer if family != "vq" else tiny_module("ett").tokenizer
    size = tokenizer.codebook_size
    inside = torch.tensor([[0, size - 1, 1, 2]])
    assert tokenizer.decode_indices(inside).shape[:2] == (1, 3)
    for outside in (size, size + 1, -1, 2 * size):  # LFQ's bits and FSQ's levels would wrap these onto codes
        with pytest.raises(ValueError, match=rf"code indices must lie in \[0, {size}\).* got -?\d+ \.\. \d+"):
            tokenizer.decode_indices(torch.tensor([[0, outside, 1, 2]]))
    for narrow in (torch.uint8, torch.int16, torch.int32):  # token files in narrow types decode as int64 do
        assert torch.equal(tokenizer.decode_indices(inside.to(narrow)), tokenizer.decode_indices(inside))
    for wrong in (inside.float(), inside.bool(), torch.tensor([[0.4, 1.0, float("nan"), 2.0]])):
        with pytest.raises(ValueError, match="code indices must be integers, got a tensor of torch"):
            tokenizer.decode_indices(wrong)


def test_a_codebook_as_large_as_the_index_type_holds_decodes_its_last_code():
    tokenizer = MAGVIT2Tokenizer(LookupFreeQuantizer(8), ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                                 resolution=IMAGE_SIZE)  # 256 codes: uint8 indices 0..255, and 256 wraps to 0 in uint8
    indices = torch.tensor([[0, 255, 1, 2]])
    assert torch.equal(tokenizer.decode_indices(indices.to(torch.uint8)), tokenizer.decode_indices(indices))
