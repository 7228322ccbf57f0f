"""channels_last changes the conv weights' memory layout, not the tokenizer's results or its saved weights."""

import torch

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector
from ett_lightning.checkpoints.export import export_module, load_export
from ett_lightning.tokenizer import VectorQuantizer, VQTokenizer
from tests.conftest import TINY_LLM


def conv_tokenizer(channels_last: bool) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(VectorQuantizer(16, 4), ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                       resolution=32, z_channels=4, channels_last=channels_last)


def conv_weights(tokenizer: VQTokenizer) -> list[torch.Tensor]:
    return [p for p in tokenizer.parameters() if p.ndim == 4 and p.shape[-1] > 1]


def test_conv_weights_are_nhwc_and_results_match_the_default_layout():
    images = (torch.rand(2, 3, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    results = []
    for channels_last in (False, True):
        tokenizer = conv_tokenizer(channels_last)
        layouts = {(w.is_contiguous(memory_format=torch.channels_last), w.is_contiguous()) for w in conv_weights(
            tokenizer)}
        assert layouts == ({(True, False)} if channels_last else {(False, True)})
        reconstructions, out = tokenizer(images)
        (reconstructions.square().mean() + out.embeddings.sum()).backward()
        results.append((out.indices, reconstructions.detach(), {n: p.grad for n, p in tokenizer.named_parameters()}))
    (plain_codes, plain, plain_grads), (nhwc_codes, nhwc, nhwc_grads) = results
    assert torch.equal(nhwc_codes, plain_codes)
    torch.testing.assert_close(nhwc, plain, rtol=1e-3, atol=2e-4)  # another summation order, same function
    for name, grad in plain_grads.items():
        if grad is not None:
            torch.testing.assert_close(nhwc_grads[name], grad, rtol=1e-3, atol=2e-4, msg=name)


def test_nhwc_weights_save_load_and_export_exactly(tmp_path):
    nhwc = conv_tokenizer(True)
    plain = conv_tokenizer(False)
    plain.load_state_dict(nhwc.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), nhwc.state_dict().values()))
    module = ETTModule(nhwc, MLPProjector(4, 32), LanguageModel(config=TINY_LLM), ETTLoss(perceptual_weight=0.0))
    export_module(module, tmp_path / "export")
    exported = load_export(tmp_path / "export")["tokenizer"]
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in nhwc.state_dict().items())
