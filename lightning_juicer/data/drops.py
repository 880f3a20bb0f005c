"""Counting every sample the data pipeline drops, with its reason, across DataLoader workers.

Workers cannot share memory with the trainer, so each worker counts its own drops and the
counts since the last batch ride along inside the next batch (``batch["drops"]``); the
DataModule takes them out after transfer and keeps the run's totals.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

DROP_REASONS = (
    "unreadable_shard",
    "corrupt_image",
    "no_image",
    "no_caption",
    "bad_caption_encoding",
    "no_sidecar_entry",
    "nonfinite_loss",  # a training batch skipped by models.guards (nonfinite_loss: skip)
    "not_in_keep_list",
    "bad_key",  # tar members whose name has no key (``..``, ``.jpg``): no sample can be made of them
)
# Samples that are kept but whose patches were chosen at random instead of by the governor, or that
# train on their original caption because the text pass left them none.
# ``repeated_in_epoch``: a worker whose pass ran short of its share of the epoch's batches topped it up
# from a new pass (data/pipeline.py).
FALLBACK_REASONS = (
    "nonfinite_scores", "random_for_missing_sidecar", "original_for_missing_juiced", "repeated_in_epoch",
)
_LOG_FIRST = 10


class DropCounter:
    """Per-process drop counts by reason; logs the first few drops of each reason, then every 1000th."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()

    def drop(self, reason: str, key: str, detail: str = "", count: int = 1) -> None:
        """Count a dropped sample (or shard, or a random fallback) and log it."""
        if reason not in DROP_REASONS + FALLBACK_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.total[reason] += count
        self._pending[reason] += count
        n = self.total[reason]
        if n <= _LOG_FIRST or n % 1000 == 0:
            log.warning("dropped %s (%s, #%d of this reason here)%s", key, reason, n, f": {detail}" if detail else "")

    def handler(self, exn: Exception) -> bool:
        """webdataset error handler: count an unreadable shard or tar member and go on."""
        self.drop("unreadable_shard", getattr(exn, "args", ["?"])[-1] if exn.args else "?", repr(exn))
        return True

    def take(self) -> dict[str, int]:
        """The counts since the previous call (they ride along in the next batch as ``batch['drops']``)."""
        pending = dict(self._pending)
        self._pending.clear()
        return pending


def merge_drops(totals: Counter[str], batch: dict) -> None:
    """Pop ``batch['drops']`` (if any) into the running totals."""
    drops = batch.pop("drops", None)
    if drops:
        totals.update(drops)
