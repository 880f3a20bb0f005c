"""Embeddings files: one ``<shard stem>.emb.parquet`` per shard, written by the embeddings pass, read by the sieves.

Parquet, rows in shard order: ``key`` string; ``image`` and ``text`` fixed_size_list<float16>[D]
(L2-normalised reference embeddings, present when a reference is set); ``cls``
fixed_size_list<float16>[D'] (the governor's CLS embedding as it comes, present when a governor is
set). Schema metadata ``juicer.embeddings`` (JSON): format_version, shard (file name), shard_url,
reference, reference_pretrained, governor, dims, temperature (1 / the reference's logit scale), counts.
Files are written atomically (``io.atomic.atomic_write``), so a file that exists is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.keeplist import shard_ids
from lightning_juicer.io.sidecar import SUFFIX as SIDECAR_SUFFIX
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.io.sidecar import sidecar_path

SUFFIX = ".emb.parquet"
META = b"juicer.embeddings"
FORMAT_VERSION = 1
FIELDS = ("image", "text", "cls")


def embeddings_path(shard_url: str, out_dir: str | Path | None = None) -> Path:
    """Embeddings file of a shard: ``<stem>.emb.parquet`` in ``out_dir`` or next to a local shard."""
    sidecar = sidecar_path(shard_url, out_dir, key="out_dir")
    return sidecar.with_name(sidecar.name.replace(SIDECAR_SUFFIX, SUFFIX))


def _fixed_list(values: np.ndarray) -> pa.Array:
    n, d = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float16).ravel(), type=pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, d) if n or d else pa.array([], pa.list_(pa.float16(), 0))


def write_embeddings(
    path: str | Path, keys: list[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write one shard's embeddings atomically (float16 fixed-size lists, metadata as JSON)."""
    columns = {"key": pa.array(list(keys), type=pa.string())}
    dims = {}
    for name in FIELDS:
        if name in arrays:
            values = np.asarray(arrays[name], dtype=np.float32).reshape(len(keys), -1)
            columns[name] = _fixed_list(values)
            dims[name] = values.shape[1]
    table = pa.table(columns).replace_schema_metadata({META: json.dumps({**meta, "dims": dims}).encode()})
    return atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def embeddings_meta(path: str | Path) -> tuple[dict[str, Any], int]:
    """The metadata and row count of an embeddings file (footer only)."""
    try:
        footer = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"embeddings file {path} cannot be read: {' '.join(str(e).split())}") from e
    raw = (footer.schema.to_arrow_schema().metadata or {}).get(META)
    if raw is None:
        raise ConfigError(f"embeddings file {path} has no juicer.embeddings metadata: not written by the embeddings pass")
    return json.loads(raw), footer.num_rows


@dataclass
class EmbeddingSet:
    """Embeddings of many shards in memory: keys, each key's shard identity (``keeplist.shard_ids``), float32
    arrays per field, metadata."""

    keys: list[str]
    shards: list[str]
    arrays: dict[str, np.ndarray]
    temperature: float | None
    files: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def read_embeddings(paths: list[str | Path], columns: tuple[str, ...] | None = None) -> EmbeddingSet:
    """Load embeddings files (all must hold the same fields) into one EmbeddingSet.

    ``columns``: load only these embedding columns (None: all); a sieve reads only what it needs, which
    bounds the memory of a million-row run. The row counts come from the files' footers first, so each
    column is one preallocated float32 array that every file's float16 rows are cast into and released
    (the peak is the float32 arrays plus one file, not plus a float16 copy of everything)."""
    if not paths:
        raise ConfigError("embeddings: no embeddings files given; run `python -m lightning_juicer embeddings` first")
    metas = [embeddings_meta(path) for path in paths]
    total = sum(rows for _, rows in metas)
    keys: list[str] = []
    shard_urls: list[str] = []
    rows_per_file: list[int] = []
    arrays: dict[str, np.ndarray] = {}
    temperature, fields, offset = None, None, 0
    for path, (meta, _) in zip(paths, metas):
        present = pq.read_schema(path).names
        names = tuple(n for n in FIELDS if n in present)
        wanted = names if columns is None else tuple(n for n in names if n in columns)
        if fields is None:
            fields = names
        elif names != fields:
            raise ConfigError(f"embeddings: {path} holds {names}, the first file holds {fields}; rerun the pass")
        table = pq.read_table(path, columns=["key", *wanted])  # only the columns asked for leave the file
        temperature = meta.get("temperature") if temperature is None else temperature
        rows = table.num_rows
        keys.extend(table.column("key").to_pylist())
        shard_urls.append(meta.get("shard_url") or meta.get("shard") or Path(path).name)
        rows_per_file.append(rows)
        for name in wanted:
            column = table.column(name).combine_chunks()
            dim = column.type.list_size if rows else meta["dims"][name]
            if name not in arrays:
                arrays[name] = np.empty((total, dim), dtype=np.float32)
            elif arrays[name].shape[1] != dim:
                raise ConfigError(f"embeddings: {path} has {name} of dimension {dim}, the first file "
                                  f"{arrays[name].shape[1]}; rerun the pass")
            arrays[name][offset : offset + rows] = column.flatten().to_numpy(zero_copy_only=False).reshape(rows, dim)
            del column
        offset += rows
        del table  # this file's rows are copied: release them before the next file is read
    ids = shard_ids(shard_urls, unique="embeddings")
    shards = [ident for ident, rows in zip(ids, rows_per_file) for _ in range(rows)]
    return EmbeddingSet(keys, shards, arrays, temperature, [str(p) for p in paths])
