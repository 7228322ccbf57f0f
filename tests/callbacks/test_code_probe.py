"""CodeProbe: an evaluation-only classifier on the tokenizer's codes; it learns what the codes hold, changes
nothing in the model, and stays out of fit unless asked."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ett_lightning.callbacks import CodeProbe
from ett_lightning.callbacks.code_probe import code_features, labelled_images
from tests.conftest import IMAGE_SIZE, tiny_module


def test_the_probe_reads_labels_the_features_carry_and_not_those_they_do_not():
    generator = torch.Generator().manual_seed(0)
    labels = [str(i % 4) for i in range(600)]
    informative = torch.nn.functional.one_hot(torch.tensor([int(x) for x in labels]), 4).float()
    informative = informative + 0.1 * torch.randn(600, 4, generator=generator)
    noise = torch.randn(600, 4, generator=generator)
    probe = CodeProbe(steps=200, batch_size=64)
    assert probe.fit_and_score(informative[:500], labels[:500], informative[500:], labels[500:]) == 1.0
    assert probe.fit_and_score(noise[:500], labels[:500], noise[500:], labels[500:]) < 0.45


def test_the_probe_trains_under_validation_inference_mode():
    x = torch.eye(2).repeat(50, 1)
    with torch.inference_mode():
        features = x.clone()
        assert CodeProbe(steps=50).fit_and_score(features, ["a", "b"] * 50, features[:2], ["a", "b"]) == 1.0


def test_unseen_validation_labels_count_as_wrong():
    x = torch.eye(2).repeat(50, 1)
    assert CodeProbe(steps=50).fit_and_score(x, ["a", "b"] * 50, x[:2], ["a", "z"]) == 0.5


def test_probe_on_synthetic_shards_leaves_the_tokenizer_as_it_was(synthetic_shards):
    module = tiny_module().train()
    before = {name: value.clone() for name, value in module.state_dict().items()}
    probe = CodeProbe(train_shards=str(synthetic_shards / "caption" / "train-*.tar"),
                      val_shards=str(synthetic_shards / "caption" / "val-*.tar"), num_train=48, num_val=16,
                      steps=20, image_size=IMAGE_SIZE)
    accuracies = probe.probe(module, None)
    assert set(accuracies) == {"word", "colour"} and all(0.0 <= a <= 1.0 for a in accuracies.values())
    assert all(torch.equal(value, before[name]) for name, value in module.state_dict().items())
    assert module.tokenizer.training
    images, labels = labelled_images(str(synthetic_shards / "caption" / "val-*.tar"), 16, IMAGE_SIZE, ("word",))
    assert images.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == torch.uint8 and len(labels["word"]) == 16
    features = code_features(module.tokenizer, images)
    tokens = module.num_image_tokens(IMAGE_SIZE)
    assert features.shape == (16, tokens * 8)


class Recorder:
    def __init__(self):
        self.logged = {}

    def log(self, name, value):
        self.logged[name] = value


def test_the_probe_stays_out_of_fit_unless_asked(monkeypatch):
    probe = CodeProbe()
    monkeypatch.setattr(probe, "probe", lambda module, datamodule: {"word": 0.5})
    module = Recorder()
    fitting = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), datamodule=None)
    probe.on_validation_epoch_end(fitting, module)
    assert module.logged == {}
    probe.during_fit = True
    probe.on_validation_epoch_end(fitting, module)
    assert module.logged == {"val/probe_word": 0.5}
    validating = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="validate"), datamodule=None)
    probe.during_fit, module.logged = False, {}
    probe.on_validation_epoch_end(validating, module)
    assert module.logged == {"val/probe_word": 0.5}
