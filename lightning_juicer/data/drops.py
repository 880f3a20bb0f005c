"""Counting every sample the run drops, with its reason: one typed ledger, merged across workers and ranks.

``DropLedger`` is the one type for drop counts: a Counter that accepts only the known reasons, so a
misspelt reason fails where it is counted instead of starting a new line in the manifest. Its
owners count what they see:

* each DataLoader worker counts its own drops (``DropCounter``, which also logs them); the counts
  since the last batch ride along inside the next batch (``batch["drops"]``) and the DataModule
  merges them into its ledger after transfer (workers cannot share memory with the trainer);
* the LightningModule counts the drops of the training step (``nonfinite_loss``) and the governor's
  random fallbacks (``nonfinite_scores``) in its own ledger.

The run's totals are the sum of the owners' ledgers summed over ranks (``DropLedger.total``), written
once to ``manifest.json`` by ``callbacks.RunSummary``. Nothing writes into another object's ledger.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

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
REASONS = DROP_REASONS + FALLBACK_REASONS
_LOG_FIRST = 10


class DropLedger(Counter):
    """Counts by reason, for the known ``REASONS`` only (a Counter: missing reasons read as 0)."""

    def __setitem__(self, reason: str, count: int) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown drop reason {reason!r}; known: {', '.join(REASONS)}")
        super().__setitem__(reason, count)

    @property
    def dropped(self) -> dict[str, int]:
        """Samples lost, by reason (non-zero only)."""
        return {r: int(self[r]) for r in DROP_REASONS if self[r]}

    @property
    def fallbacks(self) -> dict[str, int]:
        """Samples kept with a fallback (random patches, original caption, repeated), by reason (non-zero only)."""
        return {r: int(self[r]) for r in FALLBACK_REASONS if self[r]}

    @classmethod
    def total(cls, ledgers: Iterable[Mapping[str, int]], reduce=None, device: torch.device | str = "cpu") -> DropLedger:
        """The sum of ``ledgers``; with ``reduce`` (e.g. ``trainer.strategy.reduce``) also summed over ranks.

        ``reduce`` is a collective: every rank must call it with the same reasons, so all ``REASONS`` travel.
        """
        merged = cls()
        for ledger in ledgers:
            merged.update(ledger)
        if reduce is None:
            return merged
        counts = torch.tensor([float(merged[r]) for r in REASONS], device=device)
        summed = reduce(counts, reduce_op="sum").tolist()
        return cls({r: int(c) for r, c in zip(REASONS, summed) if c})


class DropCounter:
    """Per-process drop counts by reason; logs the first drops of each reason, then at 100, 1000, 10000, ...

    The rate limit keeps a keep-list run (most samples dropped by design) from logging a line per
    thousand samples; the totals are in the run summary and ``manifest.json``.
    """

    def __init__(self) -> None:
        self.total = DropLedger()
        self._pending = DropLedger()

    def drop(self, reason: str, key: str, detail: str = "", count: int = 1) -> None:
        """Count a dropped sample (or shard, or a random fallback) and log it (rate-limited)."""
        before = self.total[reason]
        self.total[reason] += count
        self._pending[reason] += count
        n = self.total[reason]
        if n <= _LOG_FIRST:
            log.warning("dropped %s (%s, #%d of this reason here)%s", key, reason, n, f": {detail}" if detail else "")
        elif n >= 100 and len(str(n)) > len(str(before)):  # crossed a power of ten
            log.warning("dropped %d samples as %s here so far (e.g. %s; logged again at %d; totals in the run "
                        "summary)", n, reason, key, 10 ** len(str(n)))

    def handler(self, exn: Exception) -> bool:
        """webdataset error handler: count an unreadable shard or tar member and go on."""
        self.drop("unreadable_shard", getattr(exn, "args", ["?"])[-1] if exn.args else "?", repr(exn))
        return True

    def take(self) -> dict[str, int]:
        """The counts since the previous call (they ride along in the next batch as ``batch['drops']``)."""
        pending = dict(self._pending)
        self._pending.clear()
        return pending


def merge_drops(totals: DropLedger, batch: dict) -> None:
    """Pop ``batch['drops']`` (if any) into the running totals."""
    drops = batch.pop("drops", None)
    if drops:
        totals.update(drops)
