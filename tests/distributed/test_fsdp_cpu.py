"""ETTFSDPStrategy's wrap units. Running FSDP itself needs an accelerator (torch raises "FSDP needs a non-CPU
accelerator device" on CPU), so this checks the policy it hands to Lightning's FSDPStrategy."""

from lightning.pytorch.strategies import FSDPStrategy
from timm.models.vision_transformer import Block
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from ett_lightning import ETTLoss, LanguageModel, MLPProjector, ViTVQTokenizer
from ett_lightning.distributed import ETTFSDPStrategy, wrap_classes
from ett_lightning.module import ETTModule
from ett_lightning.tokenizer.blocks import AttnBlock, ResnetBlock
from ett_lightning.tokenizer.quantizers import VectorQuantizer
from tests.conftest import TINY_LLM, tiny_module


def test_wrap_units_are_llm_decoder_layers_and_tokenizer_blocks():
    assert wrap_classes(tiny_module()) == {Qwen2DecoderLayer, ResnetBlock, AttnBlock}
    vit = ViTVQTokenizer(VectorQuantizer(16, 8), image_size=32, patch_size=8, encoder_model="vit_tiny_patch16_224",
                         width=32, depth=1, num_heads=2)
    module = ETTModule(vit, MLPProjector(8, 32), LanguageModel(config=TINY_LLM), loss=ETTLoss(perceptual_weight=0.0))
    assert wrap_classes(module) == {Qwen2DecoderLayer, Block}


def test_the_strategy_fills_in_the_policy_and_keeps_an_explicit_one():
    strategy = ETTFSDPStrategy(sharding_strategy="FULL_SHARD")
    assert isinstance(strategy, FSDPStrategy)
    strategy.configure_wrap_policy(tiny_module())
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert set(policy._module_classes) == {Qwen2DecoderLayer, ResnetBlock, AttnBlock}
    explicit = ModuleWrapPolicy({Qwen2DecoderLayer})
    chosen = ETTFSDPStrategy(auto_wrap_policy=explicit)
    chosen.configure_wrap_policy(tiny_module())
    assert chosen.kwargs["auto_wrap_policy"] is explicit
