"""Tiny components shared by the tests: built from configs, CPU-sized, deterministic."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ett_lightning import ETTLoss, ETTModule, IndexBackpropQuantizer, LanguageModel, MLPProjector, VQTokenizer
from ett_lightning.convert.synthetic import make_shards
from ett_lightning.models import load_text_tokenizer
from tests.chat_model import make_chat_model_dir

pytest.register_assert_rewrite("tests.health.one_rank_breach")  # its checks run inside the multi-process tests

IMAGE_SIZE = 32
TINY_LLM = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=264, max_position_embeddings=256,
                tie_word_embeddings=True)


def tiny_tokenizer(quantizer_cls=IndexBackpropQuantizer, **quantizer_kwargs) -> VQTokenizer:
    quantizer = quantizer_cls(codebook_size=32, code_dim=8, **quantizer_kwargs)
    return VQTokenizer(quantizer, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                       resolution=IMAGE_SIZE, z_channels=16)


def tiny_module(stage: str = "ett", **kwargs) -> ETTModule:
    torch.manual_seed(0)
    return ETTModule(
        tokenizer=kwargs.pop("tokenizer", None) or tiny_tokenizer(),
        projector=kwargs.pop("projector", None) or MLPProjector(8, 32),
        language_model=LanguageModel(config=TINY_LLM, lora=kwargs.pop("lora", None)),
        loss=kwargs.pop("loss", None) or ETTLoss(perceptual_weight=0.0),
        stage=stage,
        warmup_steps=1,
        **kwargs,
    )


def free_port() -> int:
    """A TCP port on localhost nothing listens on now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
                         "LOCAL_WORLD_SIZE", "GROUP_RANK")


@pytest.fixture(autouse=True)
def no_distributed_variables_left_behind():
    """A test that sets up torch.distributed in this process must leave its environment as it was: every later
    ``lightning`` run inherits it, and stale RANK/WORLD_SIZE values make them wait for ranks that never come."""
    before = {name: os.environ.get(name) for name in DISTRIBUTED_VARIABLES}
    yield
    after = {name: os.environ.get(name) for name in DISTRIBUTED_VARIABLES}
    assert after == before, f"the test left torch.distributed variables behind: {after} (was {before})"


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    """The tokenizer of a real Hugging Face chat model directory (tests/chat_model.py), loaded as users load it."""
    return load_text_tokenizer(str(make_chat_model_dir(tmp_path_factory.mktemp("chat_llm"))))


@pytest.fixture
def module_factory():
    return tiny_module


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """``ett export`` of a tiny model whose weights are shaken enough that its answers differ from question to
    question. Tests that tamper with an export work on a :func:`copy_of_export`."""
    from ett_lightning.checkpoints.export import export_module
    from ett_lightning.data.input_spec import InputSpec

    module = tiny_module("posttrain")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return export_module(module, tmp_path_factory.mktemp("export"), inputs=InputSpec(IMAGE_SIZE))


def copy_of_export(export: Path, destination: Path, edit=None) -> Path:
    """A copy of ``export`` at ``destination`` whose manifest ``edit(manifest)`` has changed in place."""
    from ett_lightning.checkpoints.manifest import EXPORT_FILE

    shutil.copytree(export, destination)
    if edit is not None:
        manifest = json.loads((destination / EXPORT_FILE).read_text())
        edit(manifest)
        (destination / EXPORT_FILE).write_text(json.dumps(manifest))
    return destination


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Caption and VQA shards, 4 train shards x 16 samples and 2 val shards, 32x32 images."""
    return make_shards(tmp_path_factory.mktemp("shards"), num_train=64, num_val=16, image_size=IMAGE_SIZE,
                       samples_per_shard=16, seed=1)


def make_batch(module: ETTModule, batch_size: int = 2, seed: int = 0, pack_length: int | None = None):
    """A collated batch through the real data-side sequence builder and collator, normalised as on the device;
    packed into rows of ``pack_length`` tokens when given."""
    from ett_lightning.data.batching.collate import Collator
    from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
    from ett_lightning.data.skips import SkipCounter

    generator = torch.Generator().manual_seed(seed)
    builder = SequenceBuilder(module.text_tokenizer, module.num_image_tokens(IMAGE_SIZE))
    samples = [
        {"image": torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, generator=generator).numpy(),
         "sequence": builder.build("caption", {}, f"the text {i} in red"), "answers": [f"{i}"], "task": "caption",
         "key": str(i)}
        for i in range(batch_size)
    ]
    collate = Collator(module.text_tokenizer.pad_token_id, SkipCounter(), builder.num_image_tokens, pack_length)
    return collate(samples).normalized()


def fit(module: ETTModule, steps: int = 1, ckpt_path: str | None = None, **trainer_args) -> L.Trainer:
    """``steps`` training steps of ``module`` on :func:`make_batch` batches in this process; no logger, checkpoints,
    progress bar or summary unless ``trainer_args`` ask for them."""
    batches = [make_batch(module, seed=i) for i in range(steps)]
    settings = dict(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**{**settings, **trainer_args})
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b), ckpt_path=ckpt_path)
    return trainer
