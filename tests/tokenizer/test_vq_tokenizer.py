import pytest
import torch

from ett_lightning.tokenizer import VectorQuantizer, VQTokenizer, codebook_stats


@pytest.mark.parametrize("ch_mult,factor", [((1, 1, 2, 2), 8), ((1, 1, 2, 2, 4), 16)])
def test_downsampling_factor_and_shapes(ch_mult, factor):
    tokenizer = VQTokenizer(VectorQuantizer(64, 8), ch=8, ch_mult=ch_mult, num_res_blocks=1,
                            attn_resolutions=(4,), resolution=64, z_channels=8)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    recon, out = tokenizer(images)
    n = (64 // factor) ** 2
    assert tokenizer.downsample_factor == factor and tokenizer.num_tokens(64) == n
    assert out.embeddings.shape == (2, n, 8) and out.embeddings.dtype == torch.float32
    assert out.indices.shape == (2, n) and out.indices.dtype == torch.int64
    assert recon.shape == images.shape
    assert torch.equal(tokenizer.decode_indices(out.indices), recon)


def test_num_tokens_rejects_indivisible_size():
    tokenizer = VQTokenizer(VectorQuantizer(16, 4), ch=8, ch_mult=(1, 2), resolution=16, z_channels=4,
                            attn_resolutions=())
    with pytest.raises(ValueError, match="not divisible by the tokenizer's downsampling factor 2"):
        tokenizer.num_tokens(15)


def test_codebook_stats_on_known_indices():
    stats = codebook_stats(torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]), codebook_size=8)
    assert stats["codebook_usage"].item() == pytest.approx(0.5)
    assert stats["codebook_perplexity"].item() == pytest.approx(4.0, rel=1e-5)
