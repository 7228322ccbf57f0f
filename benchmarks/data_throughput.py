"""Samples/s of the full ImageTextDataModule pipeline vs a raw tar-read + PIL-decode loop, same files and run.

Prints one line per worker count and the ratio pipeline / raw (target >= 0.9 at equal workers): the median over
``--repeats`` alternating passes of each, with the range, since a single pass here varies by 20 % or more.
    python benchmarks/data_throughput.py --shards "data/synthetic/caption/train-*.tar"
    python benchmarks/data_throughput.py --shards "data/conv/conversation/train-*.tar" --tokenizer /path/to/llm
``--tokenizer`` (a Hugging Face model or tokenizer directory) tokenizes with that tokenizer and, for conversation
shards, its chat template; without it the byte-level tokenizer and the default template.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import time

from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ett_lightning.data import ImageTextDataModule
from ett_lightning.data.streaming.shards import expand_shards
from ett_lightning.models import load_text_tokenizer


class RawDecode(IterableDataset):
    """The floor: read every tar member, decode the images with PIL, nothing else (shards split by worker)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __iter__(self):
        info = get_worker_info()
        urls = self.urls[info.id :: info.num_workers] if info else self.urls
        for url in urls:
            with tarfile.open(url) as tar:
                for member in tar:
                    data = tar.extractfile(member).read()
                    if member.name.endswith((".png", ".jpg", ".jpeg", ".webp")):
                        Image.open(io.BytesIO(data)).convert("RGB")
                        yield 1


def rate(iterable, samples_of) -> float:
    """Steady-state samples/s: the clock starts at the first item, so worker start-up is not counted."""
    iterator = iter(iterable)
    next(iterator)
    start, count = time.perf_counter(), 0
    for item in iterator:
        count += samples_of(item)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tokenizer", help="Hugging Face tokenizer directory (default: byte-level)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating passes of pipeline and raw decode")
    args = parser.parse_args()
    urls = expand_shards(args.shards)
    tokenizer = load_text_tokenizer(args.tokenizer)
    for workers in args.workers:
        dm = ImageTextDataModule(val_shards=urls, batch_size=args.batch_size, num_workers=workers,
                                 image_size=args.image_size, pin_memory=False)
        dm.attach(tokenizer, (args.image_size // 8) ** 2)
        pipeline, raw = [], []
        for _ in range(args.repeats):
            pipeline.append(rate(dm.val_dataloader(), len))
            raw.append(rate(DataLoader(RawDecode(urls), batch_size=None, num_workers=workers), lambda _: 1))
        ratios = [p / r for p, r in zip(pipeline, raw)]
        print(f"workers={workers}: pipeline {statistics.median(pipeline):8.1f} samples/s  raw decode "
              f"{statistics.median(raw):8.1f} samples/s  ratio {statistics.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}, {args.repeats} passes)")


if __name__ == "__main__":
    main()
