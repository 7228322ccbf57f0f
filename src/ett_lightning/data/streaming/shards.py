"""Shard lists: expansion and checks before training, and DDP/worker-aware shard streams."""

from __future__ import annotations

import glob
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

from braceexpand import braceexpand
from torch.utils.data import IterableDataset
from webdataset.utils import pytorch_worker_info

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://", "hf://")


def expand_shards(spec: str | list[str]) -> list[str]:
    """Expands brace patterns (``train-{000000..000099}.tar``) and local globs; checks local files exist.

    URLs and ``pipe:`` commands are passed through unchecked (webdataset's ``gopen`` opens them).
    Raises one clear error naming the pattern when a local pattern matches nothing or a file is missing.
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand(pattern):
            urls.extend(expand_local(url, pattern))
    if not urls:
        raise FileNotFoundError(f"shard pattern {spec!r} matches no shards")
    return urls


def expand_local(url: str, pattern: str) -> list[str]:
    if url.startswith(REMOTE_PREFIXES):
        return [url]
    path = url.removeprefix("file:")
    if glob.has_magic(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise FileNotFoundError(f"shard pattern {pattern!r}: glob {path!r} matches no files{where(path)}")
        return matches
    if not Path(path).is_file():
        raise FileNotFoundError(f"shard pattern {pattern!r}: missing shard file {path!r}{where(path)}")
    return [path]


def where(path: str) -> str:
    """What to check next: the directory a relative path is read from, and how such shards are made (the demo's
    synthetic ones by ``make shards``, anyone else's by ``ett-convert``)."""
    relative = "" if Path(path).is_absolute() else f" (relative to the working directory {Path.cwd()})"
    if "data/synthetic" in path:
        return f"{relative}. The demo recipes read data/synthetic: `make shards` (or `ett-make-shards " \
               "data/synthetic`) writes it"
    return f"{relative}. Shards are made from your data with `ett-convert` (llava, vqav2, folder; docs/data.md)"


def assigned_shards(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one (rank, worker) slot reads: disjoint across slots when there are enough shards."""
    slots = world_size * num_workers
    slot = rank * num_workers + worker
    if len(urls) < slots:
        warnings.warn(
            f"{len(urls)} shards for {world_size} ranks x {num_workers} workers: slots share shards; "
            "write at least one shard per (rank, worker) for disjoint reading",
            stacklevel=2,
        )
        return [urls[slot % len(urls)]]
    return urls[slot::slots]


def slot_generator(seed: int, start_step: int, passes: int, *salt: int) -> random.Random:
    """A generator for this (rank, worker) slot, seeded by (seed, start_step, rank, worker, passes, *salt): the same
    in every run, different for every slot and pass. Integers only: string hashes change from process to process."""
    rank, _, worker, _ = pytorch_worker_info()
    return random.Random(hash((seed, start_step, rank, worker, passes, *salt)))


class ResampledShardStream(IterableDataset):
    """Endless shard stream for training: each (rank, worker) resamples its own disjoint subset.

    The generator is seeded by (seed, start_step, rank, worker, pass), so runs are reproducible, no two slots
    draw the same sequence, and a run resumed at step ``start_step`` does not replay the shards it already read.
    Epoch length is set downstream with ``with_epoch``; every rank sees the same step count.
    """

    def __init__(self, urls: list[str], seed: int = 0, start_step: int = 0) -> None:
        self.urls = urls
        self.seed = seed
        self.start_step = start_step
        self.passes = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        rank, world_size, worker, num_workers = pytorch_worker_info()
        mine = assigned_shards(self.urls, rank, world_size, worker, num_workers)
        rng = slot_generator(self.seed, self.start_step, self.passes)
        self.passes += 1
        while True:
            yield {"url": rng.choice(mine)}


class OrderedShardStream(IterableDataset):
    """Every shard once, in order, for validation: each (rank, worker) reads them all and :class:`EvenSplit` keeps
    its share of the samples."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __iter__(self) -> Iterator[dict[str, str]]:
        for url in self.urls:
            yield {"url": url}
