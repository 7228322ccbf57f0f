"""Open-MAGVIT2 checkpoints: a state dict with the released key names, generated at tiny widths by a functional
reference forward pass written from the published architecture (bias-free residual blocks, strided-conv downsampling,
conv + depth-to-space upsampling, adaptive group norm from the quantized grid's per-channel std and mean, LFQ with bit
``d`` worth ``2**d``); the loader must reproduce its indices and reconstructions, and export must write the tuned
tokenizer back in that layout."""

import pytest
import torch
import torch.nn.functional as F

from ett_lightning import MLPProjector
from ett_lightning.checkpoints.export import ORIGINAL_FILES, export_module
from ett_lightning.tokenizer import (
    PRESETS,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    MAGVIT2Tokenizer,
    PretrainedVQTokenizer,
    detect_format,
)
from ett_lightning.tokenizer.magvit2 import MAGVIT2ResBlock
from ett_lightning.user_errors import UserError
from tests.conftest import tiny_module
from tests.tokenizer.test_formats import Weights

CH, CH_MULT, BLOCKS, BITS, RES = 32, (1, 2), 2, 6, 16


def conv(w, x, name, out, k, stride=1, bias=True):
    weight = w(f"{name}.weight", out, x.shape[1], k, k)
    return F.conv2d(x, weight, w(f"{name}.bias", out) if bias else None, stride, k // 2)


def norm(w, x, name):
    c = x.shape[1]
    return F.group_norm(x, 32, w(f"{name}.weight", c), w(f"{name}.bias", c), eps=1e-6)


def resblock(w, x, name, out):
    h = conv(w, F.silu(norm(w, x, f"{name}.norm1")), f"{name}.conv1", out, 3, bias=False)
    h = conv(w, F.silu(norm(w, h, f"{name}.norm2")), f"{name}.conv2", out, 3, bias=False)
    return (conv(w, x, f"{name}.nin_shortcut", out, 1, bias=False) if x.shape[1] != out else x) + h


def reference_encode(w, x):
    h = conv(w, x, "encoder.conv_in", CH, 3, bias=False)
    for i, mult in enumerate(CH_MULT):
        for j in range(BLOCKS):
            h = resblock(w, h, f"encoder.down.{i}.block.{j}", CH * mult)
        if i < len(CH_MULT) - 1:
            h = conv(w, h, f"encoder.down.{i}.downsample", h.shape[1], 3, stride=2)
    for j in range(BLOCKS):
        h = resblock(w, h, f"encoder.mid_block.{j}", h.shape[1])
    return conv(w, F.silu(norm(w, h, "encoder.norm_out")), "encoder.conv_out", BITS, 1)


def reference_quantize(z):
    bits = (z > 0).long()
    indices = sum(bits[:, d] * 2**d for d in range(BITS))
    return bits.float() * 2 - 1, indices.flatten(1)


def adaptive_norm(w, x, q, name):
    c, n = x.shape[1], q.shape[2] * q.shape[3]
    mean = q.sum((2, 3)) / n
    std = (((q - mean[..., None, None]) ** 2).sum((2, 3)) / (n - 1) + 1e-6).sqrt()  # unbiased variance
    scale = F.linear(std, w(f"{name}.gamma.weight", c, BITS), w(f"{name}.gamma.bias", c))
    shift = F.linear(mean, w(f"{name}.beta.weight", c, BITS), w(f"{name}.beta.bias", c))
    return F.group_norm(x, 32, eps=1e-6) * scale[..., None, None] + shift[..., None, None]


def depth_to_space(x):
    """DCR: channel block ``i * 2 + j`` fills the pixels at row offset i, column offset j."""
    b, c4, h, w = x.shape
    c = c4 // 4
    out = x.new_empty(b, c, 2 * h, 2 * w)
    for i in range(2):
        for j in range(2):
            out[:, :, i::2, j::2] = x[:, (i * 2 + j) * c:(i * 2 + j + 1) * c]
    return out


def reference_decode(w, q):
    h = conv(w, q, "decoder.conv_in", CH * CH_MULT[-1], 3)
    for j in range(BLOCKS):
        h = resblock(w, h, f"decoder.mid_block.{j}", h.shape[1])
    for i in reversed(range(len(CH_MULT))):
        h = adaptive_norm(w, h, q, f"decoder.adaptive.{i}")
        for j in range(BLOCKS):
            h = resblock(w, h, f"decoder.up.{i}.block.{j}", CH * CH_MULT[i])
        if i > 0:
            h = depth_to_space(conv(w, h, f"decoder.up.{i}.upsample.conv1", 4 * h.shape[1], 3))
    return conv(w, F.silu(norm(w, h, "decoder.norm_out")), "decoder.conv_out", 3, 3)


def released_checkpoint(tmp_path, images, ema_shift=None):
    """As SEED-Voken saves it: Lightning ``state_dict`` with loss weights and, with ``ema_shift``, LitEma copies
    (dots removed from the names) that differ from the weights by that much; the reference outputs of the weights
    that are meant to load (the EMA ones when present)."""
    w = Weights()
    with torch.no_grad():
        reference_decode(w, reference_quantize(reference_encode(w, images))[0])
        state = {k: v.clone() for k, v in w.items()}
        if ema_shift is not None:
            for key in w:
                w[key] = w[key] + ema_shift
        quantized, indices = reference_quantize(reference_encode(w, images))
        reconstruction = reference_decode(w, quantized)
    payload = {**state, "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}
    if ema_shift is not None:
        payload |= {f"model_ema.{k.replace('.', '')}": v for k, v in w.items()}
        payload |= {"model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(7)}
    path = tmp_path / "open_magvit2.ckpt"
    torch.save({"state_dict": payload}, path)
    return path, indices, reconstruction


@pytest.mark.parametrize("fmt", ["auto", "open-magvit2"])
def test_released_checkpoints_load_and_match_the_reference_forward(tmp_path, fmt):
    images = torch.rand(2, 3, RES, RES) * 2 - 1
    path, indices, reconstruction = released_checkpoint(tmp_path, images)
    tokenizer = PretrainedVQTokenizer(str(path), format=fmt, resolution=RES).eval()
    assert tokenizer.source_format == "open-magvit2" and tokenizer.rebuild_class() is MAGVIT2Tokenizer
    assert isinstance(tokenizer.quantize, LookupFreeQuantizer) and tokenizer.codebook_size == 2**BITS
    assert tokenizer.arch == dict(ch=CH, ch_mult=CH_MULT, num_res_blocks=BLOCKS, resolution=RES)
    assert tokenizer.block_classes() == {MAGVIT2ResBlock}  # FSDP2's units
    with torch.no_grad():
        encoded = tokenizer.encode(images)
        assert torch.equal(encoded.indices, indices)
        torch.testing.assert_close(tokenizer.decode(encoded.embeddings), reconstruction, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tokenizer.decode_indices(indices), reconstruction, rtol=1e-4, atol=1e-4)


def test_the_ema_weights_load_when_present(tmp_path):
    images = torch.rand(2, 3, RES, RES) * 2 - 1
    path, indices, reconstruction = released_checkpoint(tmp_path, images, ema_shift=0.01)
    ema = PretrainedVQTokenizer(str(path), resolution=RES).eval()
    raw = PretrainedVQTokenizer(str(path), resolution=RES, use_ema=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(ema(images)[0], reconstruction, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(raw(images)[0], reconstruction, atol=1e-3)


def test_presets_name_the_released_architectures_and_our_own_weights_load_as_that_layout(tmp_path):
    assert PRESETS["open-magvit2-262144"]["codebook"] == (2**18, 18)
    assert PRESETS["open-magvit2-16384"]["codebook"] == (2**14, 14)
    ours = MAGVIT2Tokenizer(LookupFreeQuantizer(BITS), ch=CH, ch_mult=CH_MULT, num_res_blocks=BLOCKS).state_dict()
    assert detect_format(ours) == "open-magvit2"  # the same names: an export's safetensors loads like a release
    from safetensors.torch import save_file

    save_file(ours, tmp_path / "model.safetensors")
    loaded = PretrainedVQTokenizer(str(tmp_path / "model.safetensors"), format="ett", resolution=RES)
    assert isinstance(loaded.quantize, LookupFreeQuantizer) and loaded.rebuild_class() is MAGVIT2Tokenizer


def test_a_tuned_open_magvit2_tokenizer_is_written_back_in_its_layout(tmp_path):
    images = torch.rand(2, 3, RES, RES) * 2 - 1
    path, _, _ = released_checkpoint(tmp_path, images)
    module = tiny_module()
    module.tokenizer = PretrainedVQTokenizer(str(path), resolution=RES)
    module.projector = type(module.projector)(BITS, module.projector.out_dim)
    with torch.no_grad():
        module.tokenizer.decoder.conv_out.bias.add_(0.5)  # "tuned"
    export_module(module, tmp_path / "export")
    original = tmp_path / "export" / "tokenizer" / ORIGINAL_FILES["open-magvit2"][0]
    again = PretrainedVQTokenizer(str(original), resolution=RES).eval()  # format auto: found from the keys
    with torch.no_grad():
        assert torch.equal(again(images)[0], module.tokenizer.eval()(images)[0])


def test_a_layout_that_cannot_hold_the_tokenizer_is_refused_before_anything_is_written(tmp_path):
    module = tiny_module(tokenizer=MAGVIT2Tokenizer(FiniteScalarQuantizer([5, 4, 3]), ch=CH, ch_mult=CH_MULT,
                                                    num_res_blocks=BLOCKS, resolution=RES),
                         projector=MLPProjector(3, 32))
    with pytest.raises(UserError, match="'open-magvit2' holds a MAGVIT2Tokenizer with a LookupFreeQuantizer"):
        export_module(module, tmp_path / "export", tokenizer_format="open-magvit2")  # it would reload as LFQ
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("fmt", ["taming", "ibq"])
def test_a_format_that_does_not_match_the_keys_says_so(tmp_path, fmt):
    path, _, _ = released_checkpoint(tmp_path, torch.rand(1, 3, RES, RES))
    with pytest.raises(ValueError, match=f"not in the {fmt} layout: its keys are those of a MAGVIT2Tokenizer"):
        PretrainedVQTokenizer(str(path), format=fmt, resolution=RES)
