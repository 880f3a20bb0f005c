"""Reading a shard for the text pass: its vision sidecar's rows with their captions and evidence, in batches.

A DataLoader worker takes whole shards and yields each as batches ``{shard, key, caption, evidence,
classnames, last, counts, error}`` in the sidecar's row order, the last one flagged with the shard's
counts. A row without a caption member or with a caption that is not UTF-8 gets caption None (a
counted skip: ``no_caption``, ``bad_caption_encoding``); a shard sample without a sidecar row is
``no_sidecar_entry``, a tar member without a key ``bad_key``; a shard without a vision sidecar, or
that cannot be read to its end, carries ``error``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from torch.utils.data import IterableDataset

from lightning_juicer.io.sidecar import SidecarTable, read_sidecar
from lightning_juicer.passes.reader import ShardJob
from lightning_juicer.text.corpus import shard_captions

SKIP_REASONS = ("no_caption", "bad_caption_encoding", "no_sidecar_entry", "bad_key")


@dataclass(frozen=True)
class TextJob(ShardJob):
    """A shard of the text pass: ``output`` is the sidecar written, ``source`` the vision sidecar read."""

    source: Path


def sidecar_classnames(table: SidecarTable) -> list[str]:
    """The evidence head's class vocabulary: the sidecar's ``head.classnames`` setting when the vision pass
    recorded it, else every class stored for any of the shard's samples (its top-k classes)."""
    head = table.settings.get("head")
    if isinstance(head, dict) and head.get("classnames"):
        return [str(c) for c in head["classnames"]]
    return sorted({c for classes in table.rows().classes for c in classes})


class CaptionBatches(IterableDataset):
    """Whole shards per DataLoader worker: the sidecar's rows with captions and evidence, batched within the shard."""

    def __init__(self, jobs: list[TextJob], batch_size: int, threshold: float | None, max_classes: int | None) -> None:
        super().__init__()
        self.jobs = jobs
        self.batch_size = batch_size
        self.threshold = threshold
        self.max_classes = max_classes

    def __iter__(self) -> Iterator[dict]:
        for job in wds.split_by_worker(self.jobs):
            yield from self.shard(job)

    def shard(self, job: TextJob) -> Iterator[dict]:
        """One shard as batches ``{shard, key, caption, evidence, last, counts, error}``."""
        base = {"shard": job.index, "key": [], "caption": [], "evidence": [], "last": False, "counts": None,
                "classnames": []}
        if not job.source.is_file():
            yield {**base, "last": True, "counts": {"in": 0, "skipped": {}}, "error": f"no vision sidecar {job.source}"}
            return
        table = read_sidecar(job.source)
        captions, bad_keys, error = shard_captions(job.url)
        base["classnames"] = sidecar_classnames(table)
        threshold = self.threshold if self.threshold is not None else float(table.settings.get("threshold", 0.7))
        max_classes = self.max_classes if self.max_classes is not None else int(table.settings.get("max_classes", 3))
        skipped: Counter[str] = Counter()
        skipped["no_sidecar_entry"] = sum(key not in table for key in captions)
        skipped["bad_key"] = bad_keys
        batch = {**base, "key": [], "caption": [], "evidence": []}
        for i, key in enumerate(table.keys):
            data, text = captions.get(key), None
            if data is None:
                skipped["no_caption"] += 1
            else:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["bad_caption_encoding"] += 1
            entry = table.entry(i)
            batch["key"].append(key)
            batch["caption"].append(text)
            batch["evidence"].append(entry.evidence(threshold, max_classes) if text is not None else [])
            if len(batch["key"]) == self.batch_size and i < len(table) - 1:
                yield {**batch, "error": None}
                batch = {**base, "key": [], "caption": [], "evidence": []}
        counts = {"in": len(table), "skipped": {k: v for k, v in sorted(skipped.items()) if v}}
        yield {**batch, "last": True, "counts": counts, "error": error}
