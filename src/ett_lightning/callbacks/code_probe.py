"""What the tokenizer's codes say about the image: a small classifier trained on its quantized embeddings.

ETT's claim is that the caption loss puts the semantic content the LLM needs into the tokenizer's codes. A probe
measures that directly, without the LLM: an MLP learns a labelled attribute (the synthetic data's character and
its colour) from the codebook embeddings of training images and is scored on held-out images. Run on the
tokenizer before and after ETT, the difference is what tuning added to the codes.
"""

from __future__ import annotations

import io
import json

import lightning as L
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor, nn

from ett_lightning.data.streaming.decoding import IMAGE_EXTENSIONS
from ett_lightning.data.streaming.shards import expand_shards
from ett_lightning.data.streaming.transforms import ImageTransform, to_model_range


class CodeProbe(L.Callback):
    """Logs ``val/probe_<field>``: held-out accuracy of an MLP trained on the tokenizer's quantized embeddings
    [N x D, flattened] to predict the json ``fields`` of the samples (default: the synthetic data's ``word``, the
    character, and ``colour``).

    Images come from ``train_shards`` (the first ``num_train``) and ``val_shards`` (the first ``num_val``), at
    ``image_size``, by default the datamodule's. An evaluation only: the tokenizer runs in eval mode without
    gradients and the MLP has its own optimizer, so the model being evaluated is never changed. By default it runs
    in ``lightning validate`` only (``during_fit: true`` also probes at fit's validations). Deterministic by
    ``seed``.

    Args:
        fields: json fields of the samples to predict from the codes.
        train_shards: shards the probe trains on (default: the datamodule's training shards).
        val_shards: shards it is scored on (default: the datamodule's validation shards).
        num_train: training images read from ``train_shards``.
        num_val: held-out images read from ``val_shards``.
        steps: optimizer steps of the probe.
        batch_size: probe batch size.
        hidden: width of the probe MLP.
        learning_rate: the probe's AdamW learning rate.
        seed: seed of the probe's initialisation and batches.
        during_fit: also probe at the validations of ``lightning fit``.
        image_size: image side (default: the datamodule's).
    """

    def __init__(self, fields: tuple[str, ...] = ("word", "colour"), train_shards: str | None = None,
                 val_shards: str | None = None, num_train: int = 4000, num_val: int = 500, steps: int = 600,
                 batch_size: int = 128, hidden: int = 256, learning_rate: float = 1e-3, seed: int = 0,
                 during_fit: bool = False, image_size: int | None = None) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.train_shards, self.val_shards = train_shards, val_shards
        self.num_train, self.num_val = num_train, num_val
        self.steps, self.batch_size, self.hidden = steps, batch_size, hidden
        self.learning_rate, self.seed, self.during_fit = learning_rate, seed, during_fit
        self.image_size = image_size

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.state.fn == "fit" and not self.during_fit):
            return
        for name, accuracy in self.probe(pl_module, trainer.datamodule).items():
            pl_module.log(f"val/probe_{name}", accuracy)

    def probe(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None) -> dict[str, float]:
        """{field: held-out accuracy}."""
        train_shards = self.train_shards or getattr(datamodule, "train_urls", None)
        val_shards = self.val_shards or getattr(datamodule, "val_urls", None)
        if not train_shards or not val_shards:
            raise ValueError("CodeProbe needs train_shards and val_shards (or a datamodule that has both)")
        image_size = self.image_size or getattr(datamodule, "image_size", None)
        if image_size is None:
            raise ValueError("CodeProbe needs image_size (or a datamodule that has it)")
        train = labelled_images(train_shards, self.num_train, image_size, self.fields)
        val = labelled_images(val_shards, self.num_val, image_size, self.fields)
        features = {split: code_features(pl_module.tokenizer, images) for split, (images, _) in
                    (("train", train), ("val", val))}
        return {name: self.fit_and_score(features["train"], train[1][name], features["val"], val[1][name])
                for name in self.fields}

    def fit_and_score(self, train_x: Tensor, train_labels: list[str], val_x: Tensor, val_labels: list[str]) -> float:
        """Trains a fresh MLP on (train_x, labels) and returns its accuracy on val; unseen val labels count as
        wrong."""
        with torch.inference_mode(False), torch.enable_grad():
            return self.train_and_score(train_x.clone(), train_labels, val_x.clone(), val_labels)

    def train_and_score(self, train_x: Tensor, train_labels: list[str], val_x: Tensor, val_labels: list[str]) -> float:
        """:meth:`fit_and_score` with gradients on (validation runs under ``inference_mode``, which the MLP's
        parameters and inputs must be made outside of)."""
        classes = sorted(set(train_labels))
        index = {label: i for i, label in enumerate(classes)}
        train_y = torch.tensor([index[label] for label in train_labels])
        val_y = torch.tensor([index.get(label, -1) for label in val_labels])
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            classifier = nn.Sequential(nn.Linear(train_x.shape[1], self.hidden), nn.GELU(),
                                       nn.Linear(self.hidden, len(classes)))
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=self.learning_rate, weight_decay=0.01)
        for _ in range(self.steps):
            rows = torch.randint(0, len(train_y), (self.batch_size,), generator=generator)
            loss = nn.functional.cross_entropy(classifier((train_x[rows] - mean) / std), train_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = classifier((val_x - mean) / std).argmax(1)
        return (predicted == val_y).float().mean().item()


def labelled_images(shards: str | list[str], count: int, image_size: int,
                    fields: tuple[str, ...]) -> tuple[Tensor, dict[str, list[str]]]:
    """The first ``count`` samples of ``shards`` (in order) that have an image and every field in their json:
    uint8 images [n, H, W, 3] and the fields' values as strings."""
    transform, images = ImageTransform(image_size), []
    labels: dict[str, list[str]] = {name: [] for name in fields}
    for sample in wds.WebDataset(expand_shards(shards), shardshuffle=False, empty_check=False):
        meta = json.loads(sample.get("json", b"{}"))
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None or not all(name in meta for name in fields):
            continue
        images.append(torch.tensor(transform(Image.open(io.BytesIO(sample[ext])))))
        for name in fields:
            labels[name].append(str(meta[name]))
        if len(images) == count:
            break
    if not images:
        raise ValueError(f"no sample in {shards} has an image and the json fields {list(fields)}")
    return torch.stack(images), labels


@torch.no_grad()
def code_features(tokenizer: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The tokenizer's quantized embeddings of uint8 ``images``, flattened per image: what the projector reads."""
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    chunks = [tokenizer.encode(to_model_range(images[i: i + batch_size].permute(0, 3, 1, 2).to(device)))
              .embeddings.flatten(1).float().cpu() for i in range(0, len(images), batch_size)]
    tokenizer.train(was_training)
    return torch.cat(chunks)
