"""Counting what the data pipeline skips, so bad input never crashes a run and never silently disappears."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


class SkipSample(Exception):
    """Raised by sample decoding for input that cannot become a training example."""


class SkipCounter:
    """Per-process (per-worker) tally of skipped samples by reason.

    Warns on the first skip of each reason and then every ``warn_every``-th, so a shard full of bad records
    does not flood the log. :meth:`take` returns the skips since the last call; the collator puts that number
    on each batch, which is how counts from worker processes reach the training loop. Samples whose text was cut
    to fit (kept, but shorter) are counted apart: :meth:`truncate` and :meth:`take_truncated`.
    """

    def __init__(self, warn_every: int = 1000) -> None:
        self.warn_every = warn_every
        self.by_reason: Counter[str] = Counter()
        self._untaken = 0
        self.truncated = 0
        self._untaken_truncated = 0

    def skip(self, reason: str, where: str = "") -> None:
        self.by_reason[reason] += 1
        self._untaken += 1
        count = self.by_reason[reason]
        if count == 1 or count % self.warn_every == 0:
            log.warning("skipped sample (%s) %s [%d so far for this reason in this worker]", reason, where, count)

    def handler(self, exn: Exception) -> bool:
        """webdataset error handler: a corrupt tar member or truncated shard is counted, and reading goes on."""
        self.skip(f"unreadable shard data: {type(exn).__name__}", str(exn)[:200])
        return True

    def truncate(self, where: str = "") -> None:
        self.truncated += 1
        self._untaken_truncated += 1
        if self.truncated == 1 or self.truncated % self.warn_every == 0:
            log.warning("truncated sample text to max_text_tokens %s [%d so far in this worker]", where, self.truncated)

    def take_truncated(self) -> int:
        untaken, self._untaken_truncated = self._untaken_truncated, 0
        return untaken

    def take(self) -> int:
        untaken, self._untaken = self._untaken, 0
        return untaken

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())
