"""Joining precomputed governor scores (sidecars) to samples inside the data pipeline, by key."""

from __future__ import annotations

from pathlib import Path

from lightning_juicer.io.sidecar import read_sidecar, sidecar_path

SIDECAR_KEY = "data.init_args.sidecar_dir"


class SidecarJoin:
    """Pipeline stage: adds ``__scores__`` = (float16 scores, governor grid) and ``__juiced__`` (the text
    pass's caption), or None, to each raw sample.

    Runs before the shuffle buffer, while samples still arrive shard by shard, so each worker reads
    one sidecar per shard pass rather than one per sample.
    """

    def __init__(self, sidecar_dir: str | None = None) -> None:
        self.sidecar_dir = sidecar_dir
        self._url: str | None = None
        self._table = None

    def _table_for(self, url: str):
        if url != self._url:
            self._url = url
            path = sidecar_path(url, self.sidecar_dir, key=SIDECAR_KEY)
            self._table = read_sidecar(path) if Path(path).is_file() else None
        return self._table

    def __call__(self, sample: dict) -> dict:
        table = self._table_for(sample.get("__url__", ""))
        row = None if table is None else table.index.get(sample.get("__key__"))
        sample["__scores__"] = None if row is None else (table.scores[row], table.grid)
        sample["__juiced__"] = None if row is None else table.captions[row]
        return sample
