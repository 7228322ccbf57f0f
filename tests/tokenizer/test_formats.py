"""Public checkpoint layouts: state dicts with the exact public key names, generated at tiny widths by a functional
reference forward pass that reads each layout's keys the way the public code does; our loaders must reproduce it."""

import math

import pytest
import torch
import torch.nn.functional as F

from ett_lightning.tokenizer import PretrainedVQTokenizer, detect_format, from_ett, to_ett

CH, CH_MULT, BLOCKS, Z, CODES, DIM, RES = 32, (1, 2), 1, 32, 16, 8, 16


class Weights(dict):
    """Returns the tensor under ``key``, creating a random one of ``shape`` the first time (that is how the
    reference forward generates the state dict of its layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, key: str, *shape: int) -> torch.Tensor:
        if key not in self:
            self[key] = torch.randn(*shape, generator=self.generator) / math.sqrt(max(1, math.prod(shape[1:])))
        assert self[key].shape == shape, key
        return self[key]


class Layout:
    """Key names of one public layout (taming/IBQ vs LlamaGen)."""

    def __init__(self, llamagen: bool) -> None:
        self.llamagen = llamagen

    def level(self, side: str, i: int) -> str:
        if self.llamagen:
            return f"{side}.conv_blocks.{i if side == 'encoder' else len(CH_MULT) - 1 - i}"
        return f"{side}.{'down' if side == 'encoder' else 'up'}.{i}"

    def block(self, side: str, i: int, j: int) -> str:
        return f"{self.level(side, i)}.{'res' if self.llamagen else 'block'}.{j}"

    def mid(self, side: str, part: str) -> str:
        return f"{side}.mid.{ {'block_1': 0, 'attn_1': 1, 'block_2': 2}[part] if self.llamagen else part}"


def conv(w, x, name, out, k, stride=1, padding=None):
    weight = w(f"{name}.weight", out, x.shape[1], k, k)
    return F.conv2d(x, weight, w(f"{name}.bias", out), stride, k // 2 if padding is None else padding)


def norm(w, x, name):
    c = x.shape[1]
    return F.group_norm(x, 32, w(f"{name}.weight", c), w(f"{name}.bias", c), eps=1e-6)


def resblock(w, x, name, out):
    h = conv(w, F.silu(norm(w, x, f"{name}.norm1")), f"{name}.conv1", out, 3)
    h = conv(w, F.silu(norm(w, h, f"{name}.norm2")), f"{name}.conv2", out, 3)
    return (conv(w, x, f"{name}.nin_shortcut", out, 1) if x.shape[1] != out else x) + h


def attention(w, x, name):
    b, c, hh, ww = x.shape
    h = norm(w, x, f"{name}.norm")
    q, k, v = (conv(w, h, f"{name}.{p}", c, 1).reshape(b, c, hh * ww) for p in "qkv")
    attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=2)
    return x + conv(w, (v @ attn.transpose(1, 2)).reshape(b, c, hh, ww), f"{name}.proj_out", c, 1)


def middle(w, h, layout, side):
    h = resblock(w, h, layout.mid(side, "block_1"), h.shape[1])
    h = attention(w, h, layout.mid(side, "attn_1"))
    return resblock(w, h, layout.mid(side, "block_2"), h.shape[1])


def reference_encode(w, x, layout):
    h = conv(w, x, "encoder.conv_in", CH, 3)
    for i, mult in enumerate(CH_MULT):
        for j in range(BLOCKS):
            h = resblock(w, h, layout.block("encoder", i, j), CH * mult)
            if i == len(CH_MULT) - 1:
                h = attention(w, h, f"{layout.level('encoder', i)}.attn.{j}")
        if i != len(CH_MULT) - 1:
            h = conv(w, F.pad(h, (0, 1, 0, 1)), f"{layout.level('encoder', i)}.downsample.conv", h.shape[1], 3, 2, 0)
    h = middle(w, h, layout, "encoder")
    h = conv(w, F.silu(norm(w, h, "encoder.norm_out")), "encoder.conv_out", Z, 3)
    return conv(w, h, "quant_conv", DIM, 1)


def reference_quantize(w, z, kind):
    codebook = w("quantize.embedding.weight", CODES, DIM)
    flat = z.permute(0, 2, 3, 1).reshape(-1, DIM)
    if kind == "llamagen":
        flat, codebook = F.normalize(flat, dim=-1), F.normalize(codebook, dim=-1)
    indices = (flat @ codebook.t()).argmax(1) if kind == "ibq" else torch.cdist(flat, codebook).argmin(1)
    b, _, h, ww = z.shape
    return codebook[indices].reshape(b, h, ww, DIM).permute(0, 3, 1, 2), indices.reshape(b, -1)


def reference_decode(w, q, layout):
    h = conv(w, conv(w, q, "post_quant_conv", Z, 1), "decoder.conv_in", CH * CH_MULT[-1], 3)
    h = middle(w, h, layout, "decoder")
    for i in reversed(range(len(CH_MULT))):
        for j in range(BLOCKS + 1):
            h = resblock(w, h, layout.block("decoder", i, j), CH * CH_MULT[i])
            if i == len(CH_MULT) - 1:
                h = attention(w, h, f"{layout.level('decoder', i)}.attn.{j}")
        if i != 0:
            upsampled = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = conv(w, upsampled, f"{layout.level('decoder', i)}.upsample.conv", h.shape[1], 3)
    return conv(w, F.silu(norm(w, h, "decoder.norm_out")), "decoder.conv_out", 3, 3)


def public_checkpoint(kind, images):
    """(state dict with the public key names, reference indices, reference reconstruction)."""
    w, layout = Weights(), Layout(kind == "llamagen")
    with torch.no_grad():
        quantized, indices = reference_quantize(w, reference_encode(w, images, layout), kind)
        reconstruction = reference_decode(w, quantized, layout)
    return dict(w), indices, reconstruction


def save(tmp_path, kind, state):
    """Wrapped as each project saves: Lightning ``state_dict`` with loss weights (taming, IBQ + EMA), ``model``
    with a usage buffer (LlamaGen)."""
    if kind == "llamagen":
        payload = {"model": {**state, "quantize.codebook_used": torch.zeros(65536)}, "steps": 10}
    else:
        payload = {"state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}}
    path = tmp_path / f"{kind}.ckpt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("kind", ["taming", "ibq", "llamagen"])
def test_public_layouts_load_and_match_the_reference_forward(tmp_path, kind):
    images = torch.rand(2, 3, RES, RES) * 2 - 1
    state, indices, reconstruction = public_checkpoint(kind, images)
    path = save(tmp_path, kind, state)
    tokenizer = PretrainedVQTokenizer(str(path), format=kind, resolution=RES).eval()
    assert tokenizer.arch["ch_mult"] == CH_MULT and tokenizer.arch["attn_resolutions"] == (RES // 2,)
    with torch.no_grad():
        encoded = tokenizer.encode(images)
        ours = tokenizer.decode(encoded.embeddings)
    assert torch.equal(encoded.indices, indices)
    torch.testing.assert_close(ours, reconstruction, rtol=1e-4, atol=1e-4)


def test_ibq_ema_weights_are_used_when_present(tmp_path):
    images = torch.rand(1, 3, RES, RES) * 2 - 1
    state, _, _ = public_checkpoint("ibq", images)
    ema = {"model_ema." + k.replace(".", ""): v + 1 for k, v in state.items()}
    path = tmp_path / "ibq_ema.ckpt"
    torch.save({"state_dict": {**state, **ema, "model_ema.num_updates": torch.tensor(3)}}, path)
    with_ema = PretrainedVQTokenizer(str(path), resolution=RES)
    without = PretrainedVQTokenizer(str(path), resolution=RES, use_ema=False)
    assert detect_format(torch.load(path)["state_dict"]) == "ibq"
    assert torch.equal(with_ema.quant_conv.weight, state["quant_conv.weight"] + 1)
    assert torch.equal(without.quant_conv.weight, state["quant_conv.weight"])


@pytest.mark.parametrize("kind", ["taming", "llamagen"])
def test_export_to_the_original_layout_is_the_inverse(tmp_path, kind):
    state, _, _ = public_checkpoint(kind, torch.zeros(1, 3, RES, RES))
    assert from_ett(to_ett(state, kind), kind).keys() == state.keys()
    assert all(torch.equal(from_ett(to_ett(state, kind), kind)[k], v) for k, v in state.items())


def test_wrong_shapes_and_missing_keys_are_one_clear_error(tmp_path):
    state, _, _ = public_checkpoint("taming", torch.zeros(1, 3, RES, RES))
    path = save(tmp_path, "taming", state)
    wrong_shape = r"(?s)preset taming-vqgan-f16-1024.*wrong shape \(\d+\): encoder.conv_in.weight"
    with pytest.raises(ValueError, match=wrong_shape):
        PretrainedVQTokenizer(str(path), preset="taming-vqgan-f16-1024")
    del state["decoder.conv_out.bias"]
    path = save(tmp_path, "taming", state)
    with pytest.raises(ValueError, match=r"missing \(1\): decoder.conv_out.bias"):
        PretrainedVQTokenizer(str(path), resolution=RES)
    with pytest.raises(ValueError, match="unknown tokenizer checkpoint format 'maskgit'"):
        PretrainedVQTokenizer(str(path), format="maskgit")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        PretrainedVQTokenizer(str(tmp_path / "absent.ckpt"))
