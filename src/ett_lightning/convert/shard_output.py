"""Where every converter writes: size-limited webdataset shards, byte-identical on every run, and a summary of
what was written and what was skipped by reason."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import webdataset as wds

from ett_lightning.data.skips import SkipSample

log = logging.getLogger(__name__)
PARTIAL = ".partial"


class ShardOutput:
    """``OUT/<split>-NNNNNN.tar`` shards of at most ``samples_per_shard`` samples; a shard is closed once it holds
    ``max_shard_bytes`` (so one can exceed it by a sample).

    Samples get the key ``{index:09d}`` (their entry's position in the source: stable, and free of the dots that
    webdataset reads as extensions), and every tar member a fixed owner and mtime, so the same input gives the same
    bytes. The first shard is opened by the first sample, and a folder that already holds shards of the split is
    refused. A shard is written as ``<name>.tar.partial`` and renamed when it is complete, so an interrupted run
    leaves only complete shards (and partial files, which the next run removes). A sample whose text cannot be
    written as UTF-8 (a lone surrogate, which a JSON escape can hold) is skipped before anything of it is written.
    :meth:`skip` counts a bad entry by reason; :meth:`close` writes ``<split>-summary.json``.
    """

    def __init__(self, out: str | Path, split: str = "train", samples_per_shard: int = 10000,
                 max_shard_bytes: float = 1e9) -> None:
        if samples_per_shard < 1 or max_shard_bytes <= 0:
            raise ValueError(f"shards need room: samples_per_shard={samples_per_shard}, "
                             f"max_shard_bytes={max_shard_bytes}")
        self.out = Path(out)
        existing = sorted(self.out.glob(f"{split}-*.tar"))
        if existing:
            raise FileExistsError(f"{self.out} already holds {split} shards ({existing[0].name}, ...): choose an "
                                  f"empty --output or another --split, so no old shard mixes with the new ones")
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(f"{split}-*.tar{PARTIAL}"):
            log.warning("removing %s, left by an interrupted run", stale)
            stale.unlink()
        self.pattern = str(self.out / f"{split}-%06d.tar{PARTIAL}")
        self.summary_file = self.out / f"{split}-summary.json"
        self.shard_names: list[str] = []
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.writer: wds.ShardWriter | None = None
        self.written = 0
        self.skipped: Counter[str] = Counter()

    def write(self, index: int, members: dict[str, bytes | str | dict[str, Any]]) -> None:
        """Writes one sample: ``members`` maps extensions (``jpg``, ``txt``, ``json``) to bytes, text or a dict."""
        try:
            encoded = {ext: encode(value) for ext, value in members.items()}
        except UnicodeEncodeError as err:
            raise SkipSample("text that is not valid Unicode (a lone surrogate)") from err
        if self.writer is None:
            self.writer = wds.ShardWriter(self.pattern, maxcount=self.samples_per_shard,
                                          maxsize=self.max_shard_bytes, verbose=0, mtime=0.0, post=self.complete)
        self.writer.write({"__key__": f"{index:09d}", **encoded})
        self.written += 1

    def complete(self, partial_name: str) -> None:
        """A shard is full: it gets its final name."""
        final = Path(partial_name.removesuffix(PARTIAL))
        Path(partial_name).rename(final)
        self.shard_names.append(final.name)

    def skip(self, reason: SkipSample | str, where: str = "") -> None:
        reason = str(reason)
        if not self.skipped[reason]:
            log.warning("skipping %s: %s (further skips of this reason are counted, not logged)", where, reason)
        self.skipped[reason] += 1

    def close(self) -> dict[str, Any]:
        """Closes the last shard; returns the summary and writes it beside the shards."""
        if self.writer is not None:
            self.writer.close()
        summary = {"written": self.written, "skipped": sum(self.skipped.values()),
                   "skipped_by_reason": dict(sorted(self.skipped.items(), key=lambda item: (-item[1], item[0]))),
                   "shards": self.shard_names}
        self.summary_file.write_text(json.dumps(summary, indent=1) + "\n")
        return summary


def encode(value: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def format_summary(summary: dict[str, Any], out: str | Path) -> str:
    """The summary as a person reads it: written, shards, then each skip reason with its count."""
    lines = [f"wrote {summary['written']} samples in {len(summary['shards'])} shards to {out}",
             f"skipped {summary['skipped']} entries" + (":" if summary["skipped"] else "")]
    lines += [f"  {count:8d}  {reason}" for reason, count in summary["skipped_by_reason"].items()]
    return "\n".join(lines)
