"""Configuration checks before anything heavy is built: every problem found, each naming its key and the fix."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ett_lightning.data.streaming.shards import expand_shards

STAGES = ("align", "ett", "posttrain")
FILE_KEYS = ("weights", "backbone_weights", "fid_weights", "fid_feature_extractor", "init_from", "predict_prompts")
LOCAL_PREFIXES = ("/", "./", "../", "~")
SHARD_KEYS = ("train_shards", "val_shards")


def check_config(config: dict[str, Any]) -> None:
    """Raises one ValueError listing every problem in a resolved LightningCLI config (``--print_config`` form)."""
    problems = list(find_problems(config))
    if problems:
        raise ValueError("configuration problems (nothing was built):\n" + "\n".join(f"  - {p}" for p in problems))


def find_problems(config: dict[str, Any]) -> Iterator[str]:
    model = init_args(config.get("model"))
    if "stage" in model and model["stage"] not in STAGES:
        yield f"model.init_args.stage: unknown stage {model['stage']!r}; use one of {', '.join(STAGES)}"
    yield from negative_weights(init_args(model.get("loss")), "model.init_args.loss.init_args")
    yield from missing_files(config, "")
    yield from projector_mismatch(model)
    yield from quantizer_problems(config.get("model"))
    yield from shard_problems(init_args(config.get("data")))
    yield from image_size_problems(model, init_args(config.get("data")))
    yield from seed_problems(config.get("seed_everything"))
    yield from learning_rate_problems(config.get("model"))
    yield from health_callback_problems(config.get("trainer"))
    yield from validation_interval_problems(config.get("trainer"), init_args(config.get("data")))


def validation_interval_problems(trainer: Any, data: dict[str, Any]) -> Iterator[str]:
    """A whole-number ``val_check_interval`` longer than an epoch, while validation still waits for epochs to end:
    Lightning stops at its first batch with a traceback. Counted as the data module counts (``samples_per_epoch``
    over batch size and ranks; all ranks are assumed where ``devices`` is not a number), so a config this
    passes may still be refused, never the other way round."""
    trainer = trainer if isinstance(trainer, dict) else {}
    interval, per_epoch = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch", 1)
    samples, batch = data.get("samples_per_epoch"), data.get("batch_size")
    if per_epoch is None or not all(type(value) is int and value > 0 for value in (interval, samples, batch)):
        return
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    ranks = devices * nodes if type(devices) is int and type(nodes) is int and devices > 0 and nodes > 0 else 1
    batches = max(1, samples // (batch * ranks))
    if interval > batches:
        yield (f"trainer.val_check_interval: {interval} batches is longer than an epoch ({batches} batches per rank: "
               f"data samples_per_epoch {samples} / batch_size {batch} / {ranks} rank(s)); set "
               "trainer.check_val_every_n_epoch: null to count batches across epochs, or validate more often")


def learning_rate_problems(model: Any) -> Iterator[str]:
    """``learning_rates`` names only what the model trains (a misspelt name would be ignored silently)."""
    rates = init_args(model).get("learning_rates")
    cls = package_class(model)
    if not isinstance(rates, dict) or cls is None or not hasattr(cls, "default_learning_rates"):
        return
    known = {*cls.default_learning_rates, *cls.component_names, "codebook"}
    for name in sorted(set(rates) - known):
        yield f"model.init_args.learning_rates.{name}: no such part; give rates for {', '.join(sorted(known))}"


def health_callback_problems(trainer: Any) -> Iterator[str]:
    """The tokenizer-health callbacks' settings, checked by building them (cheap, nothing loaded) before the rest."""
    from ett_lightning.health import TokenizerHealth
    from ett_lightning.user_errors import UserError

    callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
    for index, callback in enumerate(callbacks if isinstance(callbacks, list) else []):
        cls = package_class(callback)
        if isinstance(cls, type) and issubclass(cls, TokenizerHealth):
            try:
                cls(**init_args(callback))
            except UserError as problem:
                yield f"trainer.callbacks[{index}] ({cls.__name__}): {problem}"


def quantizer_problems(model: Any) -> Iterator[str]:
    """An implicit-codebook quantizer's settings, checked by building it (a few buffers), and a codebook too wide
    for text-to-image's image head."""
    from ett_lightning.tokenizer import Quantizer

    node = init_args(init_args(model).get("tokenizer")).get("quantizer")
    cls, key = package_class(node), "model.init_args.tokenizer.init_args.quantizer"
    if not (isinstance(cls, type) and issubclass(cls, Quantizer)) or cls.learned_codebook:
        return
    try:
        codes = cls(**init_args(node)).codebook_size
    except (TypeError, ValueError) as problem:
        yield f"{key} ({cls.__name__}): {problem}"
        return
    if getattr(package_class(model), "__name__", "") != "TextToImage":
        return
    from ett_lightning.tasks.text_to_image import MAX_IMAGE_CODES

    if codes > MAX_IMAGE_CODES:
        yield (f"{key}: {codes} codes; text-to-image's image head predicts one of at most {MAX_IMAGE_CODES} per "
               "image token")


def package_class(node: Any) -> type | None:
    """The class a ``class_path`` of this package names, else None (other code is not imported here)."""
    path = node.get("class_path") if isinstance(node, dict) else None
    if not isinstance(path, str) or not path.startswith("ett_lightning.") or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def seed_problems(seed: Any) -> Iterator[str]:
    """``seed_everything`` is true, false, or a whole number NumPy accepts as a seed (0 .. 2**32 - 1)."""
    if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:
        yield f"seed_everything: {seed} is out of range; give a whole number from 0 to {2**32 - 1} (or true, false)"


def init_args(node: Any) -> dict[str, Any]:
    """A component's arguments whether given as ``{class_path, init_args}`` or as a plain mapping."""
    if not isinstance(node, dict):
        return {}
    return (node.get("init_args") or {}) if "class_path" in node else node


def negative_weights(loss: dict[str, Any], where: str) -> Iterator[str]:
    for key, value in loss.items():
        if (key.endswith("_weight") or key == "alpha") and isinstance(value, int | float) and value < 0:
            yield f"{where}.{key}: {value} is negative; loss weights must be >= 0 (0 switches the term off)"


def missing_files(node: Any, where: str) -> Iterator[str]:
    """Every weight-file key anywhere in the config, and LanguageModel local paths, must exist; no value anywhere may
    still be a recipe placeholder such as ``<LLM_DIR>``."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else key
            if isinstance(value, str) and is_placeholder(value):
                yield placeholder_problem(path, value)
            elif key in FILE_KEYS and isinstance(value, str):
                yield from missing_path(path, value)
            elif key in ("pretrained", "tokenizer") and isinstance(value, str) and value.startswith(LOCAL_PREFIXES):
                yield from missing_path(path, value)
            else:
                yield from missing_files(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from missing_files(value, f"{where}[{index}]")


def is_placeholder(value: str) -> bool:
    return len(value) > 2 and value.startswith("<") and value.endswith(">")


def placeholder_problem(key: str, value: str) -> str:
    return f"{key}: placeholder {value} was not replaced; set it to a local path (see the recipe's header)"


def missing_path(key: str, value: str) -> Iterator[str]:
    if "://" not in value and not Path(value).expanduser().exists():
        yield f"{key}: {value} does not exist; fix the path or copy the file to this machine"


def projector_mismatch(model: dict[str, Any]) -> Iterator[str]:
    """The projector reads the quantizer's code vectors: ``code_dim`` values (VQ, IBQ), ``bits`` (LFQ) or one per
    entry of ``levels`` (FSQ)."""
    projector = init_args(model.get("projector"))
    quantizer = init_args(init_args(model.get("tokenizer")).get("quantizer"))
    levels = quantizer.get("levels")
    for name, dim in (("code_dim", quantizer.get("code_dim")), ("bits", quantizer.get("bits")),
                      ("number of levels", len(levels) if isinstance(levels, list) else None)):
        if isinstance(dim, int) and "in_dim" in projector and projector["in_dim"] != dim:
            yield (f"model.init_args.projector.init_args.in_dim: {projector['in_dim']} differs from the tokenizer's "
                   f"quantizer {name} {dim}; set in_dim to {dim}")


def shard_problems(data: dict[str, Any]) -> Iterator[str]:
    for key in SHARD_KEYS:
        value = data.get(key)
        if value and not (isinstance(value, str) and is_placeholder(value)):  # a placeholder is reported once
            try:
                expand_shards(value)
            except FileNotFoundError as err:
                yield f"data.init_args.{key}: {err}"


def image_size_problems(model: dict[str, Any], data: dict[str, Any]) -> Iterator[str]:
    tokenizer = init_args(model.get("tokenizer"))
    ch_mult, vit_size = tokenizer.get("ch_mult"), tokenizer.get("image_size")
    size = data.get("image_size")
    if isinstance(vit_size, int) and isinstance(size, int) and size != vit_size:
        yield (f"data.init_args.image_size: {size} but the ViT tokenizer is built for {vit_size}px images; set both "
               "to the same size")
    generated = model.get("image_size")
    if isinstance(generated, int) and isinstance(size, int) and size != generated:
        yield (f"data.init_args.image_size: {size} but model.init_args.image_size (the generated images) is "
               f"{generated}; set both to the same size")
    if ch_mult and isinstance(size, int):
        factor = 2 ** (len(ch_mult) - 1)
        if size % factor:
            yield (f"data.init_args.image_size: {size} is not divisible by the tokenizer's downsampling factor "
                   f"{factor} (ch_mult {list(ch_mult)}); use a multiple of {factor}, e.g. {size // factor * factor}")
