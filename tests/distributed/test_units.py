"""The units FSDP2 shards, found from the model: LLM decoder layers and tokenizer blocks, for both tokenizer kinds."""

from timm.models.vision_transformer import Block
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from ett_lightning import ETTLoss, LanguageModel, MLPProjector, ViTVQTokenizer
from ett_lightning.distributed import wrap_classes
from ett_lightning.module import ETTModule
from ett_lightning.tokenizer.blocks import AttnBlock, ResnetBlock
from ett_lightning.tokenizer.quantizers import VectorQuantizer
from tests.conftest import TINY_LLM, tiny_module


def test_units_are_llm_decoder_layers_and_tokenizer_blocks():
    assert wrap_classes(tiny_module()) == {Qwen2DecoderLayer, ResnetBlock, AttnBlock}
    vit = ViTVQTokenizer(VectorQuantizer(16, 8), image_size=32, patch_size=8, encoder_model="vit_tiny_patch16_224",
                         width=32, depth=1, num_heads=2)
    module = ETTModule(vit, MLPProjector(8, 32), LanguageModel(config=TINY_LLM), loss=ETTLoss(perceptual_weight=0.0))
    assert wrap_classes(module) == {Qwen2DecoderLayer, Block}
