import copy
from pathlib import Path

import pytest

from ett_lightning.cli import main as cli_main
from ett_lightning.resilience import check_config

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "model": {"class_path": "ett_lightning.ETTModule", "init_args": {
        "stage": "ett",
        "tokenizer": {"class_path": "ett_lightning.VQTokenizer", "init_args": {
            "ch_mult": [1, 2, 2, 4], "quantizer": {"class_path": "ett_lightning.IndexBackpropQuantizer",
                                                   "init_args": {"codebook_size": 256, "code_dim": 32}}}},
        "projector": {"class_path": "ett_lightning.MLPProjector", "init_args": {"in_dim": 32, "out_dim": 128}},
        "language_model": {"class_path": "ett_lightning.LanguageModel",
                           "init_args": {"pretrained": "Qwen/Qwen2.5-1.5B"}},
        "loss": {"class_path": "ett_lightning.ETTLoss", "init_args": {"alpha": 0.25, "perceptual_weight": 0.0}},
    }},
    "data": {"class_path": "ett_lightning.ImageTextDataModule", "init_args": {"image_size": 64}},
    "trainer": {"callbacks": [{"class_path": "ett_lightning.callbacks.ReconstructionMetrics",
                               "init_args": {"fid_weights": None}}]},
}


def LFQ(bits: int) -> dict:  # noqa: N802 (named as the quantizer it stands for)
    return {"class_path": "ett_lightning.LookupFreeQuantizer", "init_args": {"bits": bits}}


def FSQ(levels: list[int]) -> dict:  # noqa: N802
    return {"class_path": "ett_lightning.FiniteScalarQuantizer", "init_args": {"levels": levels}}


def with_change(path: str, value):
    config = copy.deepcopy(GOOD)
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return config


def test_a_good_config_passes():
    check_config(GOOD)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("model.init_args.stage", "sft", r"model.init_args.stage: unknown stage 'sft'; use one of align, ett, posttrain"),
    ("model.init_args.loss.init_args.alpha", -1.0, r"loss.init_args.alpha: -1.0 is negative"),
    ("model.init_args.projector.init_args.in_dim", 8, r"projector.init_args.in_dim: 8 differs .* set in_dim to 32"),
    ("model.init_args.language_model.init_args.pretrained", "/models/absent", r"pretrained: /models/absent does not"),
    ("model.init_args.tokenizer.init_args.weights", "<TOKENIZER_WEIGHTS>", r"tokenizer.init_args.weights: placeholder"),
    ("trainer.callbacks.0.init_args.fid_weights", "/nope/inception.pth", r"callbacks\[0\].init_args.fid_weights"),
    ("data.init_args.image_size", 60, r"image_size: 60 is not divisible by .* factor 8 .* e.g. 56"),
    ("data.init_args.train_shards", "/data/none-{0..3}.tar", r"data.init_args.train_shards: shard pattern"),
    ("data.init_args.predict_prompts", "/absent/prompts.txt", r"data.init_args.predict_prompts: /absent/prompts.txt"),
    ("model.init_args.image_size", 128, r"image_size: 64 but model.init_args.image_size \(the generated images\)"),
    ("model.init_args.tokenizer.init_args.quantizer", LFQ(6), r"32 differs .* quantizer bits 6; set in_dim to 6"),
    ("model.init_args.tokenizer.init_args.quantizer", FSQ([5, 5, 5]), r"quantizer number of levels 3; set in_dim to 3"),
    ("model.init_args.tokenizer.init_args.quantizer", LFQ(32), r"quantizer \(LookupFreeQuantizer\): .* 1 to 24 bits"),
    ("model.init_args.tokenizer.init_args.quantizer", FSQ([2, 5]), r"\(FiniteScalarQuantizer\): .* at least 3 values"),
    ("model", {"class_path": "ett_lightning.tasks.TextToImage", "init_args": {
        "tokenizer": {"class_path": "ett_lightning.MAGVIT2Tokenizer", "init_args": {"quantizer": LFQ(18)}}}},
     r"262144 codes; text-to-image's image head .* 131072"),
])
def test_each_problem_names_its_key_and_the_fix(path, value, message):
    with pytest.raises(ValueError, match=message):
        check_config(with_change(path, value))


@pytest.mark.parametrize(("trainer", "refused"), [
    ({"val_check_interval": 201}, True),
    ({"val_check_interval": 200}, False),
    ({"val_check_interval": 101, "devices": 2}, True),
    ({"val_check_interval": 101, "devices": "auto"}, False),  # ranks unknown: only what is wrong for any count
    ({"val_check_interval": 500, "check_val_every_n_epoch": None}, False),
    ({"val_check_interval": 0.5}, False),
])
def test_a_validation_interval_longer_than_an_epoch_is_refused_unless_counted_across_epochs(trainer, refused):
    config = copy.deepcopy(GOOD)
    config["trainer"].update(trainer)
    config["data"]["init_args"].update({"samples_per_epoch": 3200, "batch_size": 16})  # 200 batches in one process
    if not refused:
        check_config(config)
        return
    with pytest.raises(ValueError, match=r"trainer.val_check_interval: \d+ batches is longer than an epoch \((200|100) "
                                         r"batches per rank.*set trainer.check_val_every_n_epoch: null"):
        check_config(config)


def test_all_problems_are_reported_at_once():
    config = with_change("model.init_args.stage", "sft")
    config["data"]["init_args"]["image_size"] = 60
    with pytest.raises(ValueError, match=r"(?s)unknown stage.*not divisible"):
        check_config(config)


def test_the_cli_checks_before_building_anything_and_exits_like_a_parser_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli_main(["fit", "--config", str(ROOT / "recipes/demo/ett_sft.yaml"),
                  "--model.init_args.init_from=/absent/last.ckpt"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "init_from: /absent/last.ckpt does not exist" in error and "Traceback" not in error


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "absent.yaml"], "absent.yaml"),
    (["--config", str(ROOT / "recipes/demo/ett_sft.yaml"), "--model.class_path=ett_lightning.NoSuchModule"],
     "NoSuchModule"),
    (["--config", str(ROOT / "recipes/demo/ett_sft.yaml"), "--model.init_args.no_such_option=3"], "no_such_option"),
], ids=["missing config file", "wrong class_path", "unknown key"])
def test_parser_errors_name_the_problem_without_a_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli_main(["fit", *args])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and message in error and "Traceback" not in error


def test_misspelt_learning_rates_and_odd_guard_settings_are_caught_before_anything_is_built():
    config = with_change("model.init_args.learning_rates", {"tokeniser": 1e-5, "codebook": 1e-4})
    guard = {"class_path": "ett_lightning.health.TokenizerGuard", "init_args": {"every_n_steps": 0}}
    config["trainer"]["callbacks"].append(guard)
    with pytest.raises(ValueError) as caught:
        check_config(config)
    assert "learning_rates.tokeniser: no such part; give rates for codebook, language_model" in str(caught.value)
    assert "callbacks[1] (TokenizerGuard): TokenizerGuard: every_n_steps, window_checks" in str(caught.value)
    assert "learning_rates.codebook" not in str(caught.value)
    guard["init_args"].update(every_n_steps=100, lr_factor=-0.1)
    with pytest.raises(ValueError, match=r"lr_factor must lie between 0 and 1 \(got -0.1\)"):
        check_config(config)


def test_a_vit_tokenizer_must_match_the_data_image_size():
    config = with_change("model.init_args.tokenizer.init_args", {"image_size": 64, "patch_size": 8})
    check_config(config)
    config["data"]["init_args"]["image_size"] = 32
    with pytest.raises(ValueError, match=r"image_size: 32 but the ViT tokenizer is built for 64px images"):
        check_config(config)


@pytest.mark.parametrize("recipe", ["ett_align", "ett_sft", "ett_posttrain", "ett_t2i", "ett_align_open_magvit2",
                                    "ett_sft_open_magvit2"])
def test_every_placeholder_of_a_real_recipe_is_caught_before_anything_is_built(recipe):
    import re

    import yaml

    text = (ROOT / "recipes" / f"{recipe}.yaml").read_text()
    placeholders = set(re.findall(r"<[A-Z0-9_]+>", yaml.safe_dump(yaml.safe_load(text))))
    assert "<LLM_DIR>" in placeholders
    with pytest.raises(ValueError) as caught:
        check_config(yaml.safe_load(text))
    named = set(re.findall(r"placeholder (<[A-Z0-9_]+>) was not replaced", str(caught.value)))
    assert named == placeholders


def test_a_placeholder_shard_pattern_is_reported_once():
    config = with_change("data.init_args.train_shards", "<TRAIN_SHARDS>")
    with pytest.raises(ValueError) as caught:
        check_config(config)
    assert str(caught.value).count("<TRAIN_SHARDS>") == 1
