"""Vision sidecars: the governor's outputs for one input shard, in one Parquet file, joined to samples by key.

One file per shard, ``<shard stem>.juice.parquet``, next to the shard or in a sidecar directory.
Rows follow the shard's sample order; columns:

=========  ==================  ==========================================================
key        string              the sample's webdataset ``__key__``
grid_h     int16               governor patch grid rows
grid_w     int16               governor patch grid columns
scores     list<float16>       Eq. 2 scores of the whole grid, row-major (m = grid_h * grid_w),
                               so the keep ratio can change at train time
classes    list<string>        the governor's top classes, most probable first
probs      list<float32>       their probabilities (evidence ``p > ε`` is filtered at use time)
caption    string, nullable    the juiced caption; null until the text branch fills it
=========  ==================  ==========================================================

Schema metadata: ``juicer.format_version``, ``juicer.governor`` (the governor's name, local paths
resolved), ``juicer.settings`` (JSON: image_size, patch_size, grid, mean, std, interpolation,
resize_mode, pretrained, head, threshold, max_classes, top_k_classes) and any extra ``juicer.<name>``
JSON entries (the vision pass stores the shard's counts as ``juicer.counts``). Files are written
atomically (``<file>.tmp-<pid>``, fsync, ``os.replace``), so a sidecar that exists is complete.

The DataModule loads a shard's sidecar once per worker with ``read_sidecar`` and looks samples up
with ``SidecarTable.get(key)``; ``check_sidecar`` reads only the footer, for start-up checks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.io.shards import is_remote

FORMAT_VERSION = 1
SUFFIX = ".juice.parquet"
META_PREFIX = "juicer."
_FLOAT16_MAX = float(np.finfo(np.float16).max)

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("grid_h", pa.int16(), nullable=False),
        pa.field("grid_w", pa.int16(), nullable=False),
        pa.field("scores", pa.list_(pa.float16()), nullable=False),
        pa.field("classes", pa.list_(pa.string()), nullable=False),
        pa.field("probs", pa.list_(pa.float32()), nullable=False),
        pa.field("caption", pa.string(), nullable=True),
    ]
)


def shard_name(shard_url: str) -> str | None:
    """File name of a shard URL (local path, ``scheme://`` URL or ``pipe:`` command); None if not found."""
    if shard_url.startswith("pipe:"):
        tokens = [t for t in shard_url[5:].split() if ".tar" in t]
        return os.path.basename(urlparse(tokens[-1]).path) if tokens else None
    if is_remote(shard_url):
        return os.path.basename(urlparse(shard_url).path) or None
    return Path(shard_url).name or None


def sidecar_path(shard_url: str, sidecar_dir: str | Path | None = None, key: str = "sidecar_dir") -> Path:
    """Sidecar file of a shard: ``<stem>.juice.parquet`` in ``sidecar_dir``, or next to a local shard."""
    name = shard_name(str(shard_url))
    if not name:
        raise ConfigError(f"{key}: cannot tell the shard file name of {shard_url!r}")
    stem = name[: name.index(".tar")] if ".tar" in name else Path(name).stem
    if sidecar_dir is not None:
        return Path(sidecar_dir) / f"{stem}{SUFFIX}"
    if is_remote(shard_url):
        raise ConfigError(f"{key}: shard {shard_url} is not a local file; set {key} to a folder for its sidecar")
    return Path(shard_url).parent / f"{stem}{SUFFIX}"


def governor_id(name: str | Path) -> str:
    """Canonical governor name for sidecar metadata: local folders and files resolved to absolute paths."""
    name = str(name)
    for prefix in ("open_clip:local-dir:", "local-dir:", ""):
        if name.startswith(prefix) and name[len(prefix) :] and Path(name[len(prefix) :]).exists():
            return prefix + str(Path(name[len(prefix) :]).resolve())
    return name


@dataclass
class SidecarRows:
    """Column data of one sidecar: n samples over one governor grid (probs may be [n, k] or ragged)."""

    keys: list[str]
    scores: np.ndarray
    grid: tuple[int, int]
    classes: list[list[str]]
    probs: Sequence[Sequence[float]] | np.ndarray
    captions: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.keys)


class SidecarEntry(NamedTuple):
    """One sample's sidecar row: scores float16 [m] (row-major grid), top classes, their probs, caption."""

    scores: np.ndarray
    classes: list[str]
    probs: np.ndarray
    caption: str | None

    def evidence(self, threshold: float = 0.7, max_classes: int = 3) -> list[tuple[str, float]]:
        """Visual evidence C' (Eq. 4): stored classes with p > threshold, most probable first, at most max_classes."""
        return strongest_classes(zip(self.classes, self.probs.tolist()), threshold, max_classes)


def strongest_classes(pairs: Iterable[tuple[str, float]], threshold: float = 0.7,
                      max_classes: int = 3) -> list[tuple[str, float]]:
    """Eq. 4's filter, the one place it is written: (class, p) with p > threshold, most probable first
    (ties keep their order), at most max_classes. Used on a sidecar's stored classes and by
    ``governor.evidence.class_evidence`` on a head's output."""
    ranked = sorted(pairs, key=lambda cp: -cp[1])
    return [(c, p) for c, p in ranked if p > threshold][: max(0, max_classes)]


class SidecarInfo(NamedTuple):
    """A sidecar's metadata (from the Parquet footer only)."""

    path: Path
    format_version: int
    governor: str
    settings: dict[str, Any]
    grid: tuple[int, int]
    num_rows: int
    extra: dict[str, Any]


def _metadata(governor: str, settings: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[bytes, bytes]:
    meta = {
        "format_version": str(FORMAT_VERSION),
        "governor": governor_id(governor),
        "settings": json.dumps(dict(settings), sort_keys=True),
    }
    for name, value in (extra or {}).items():
        if name in meta:
            raise ValueError(f"sidecar metadata name {name!r} is reserved")
        meta[name] = json.dumps(value, sort_keys=True)
    return {f"{META_PREFIX}{k}".encode(): v.encode() for k, v in meta.items()}


def _list_array(values: pa.Array, lengths: Sequence[int]) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(np.asarray(lengths, dtype=np.int64))
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def to_arrow(
    rows: SidecarRows, governor: str, settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> pa.Table:
    """The sidecar as an Arrow table with its schema metadata (validates shapes and lengths)."""
    n, (grid_h, grid_w) = len(rows.keys), rows.grid
    scores = np.asarray(rows.scores, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, grid_h * grid_w))
    if scores.shape != (n, grid_h * grid_w):
        raise ValueError(f"sidecar scores have shape {scores.shape}, expected ({n}, {grid_h * grid_w}) for {rows.grid}")
    if len(rows.classes) != n or len(rows.probs) != n:
        raise ValueError(f"sidecar has {n} keys but {len(rows.classes)} class lists and {len(rows.probs)} prob lists")
    if len(set(rows.keys)) != n:
        raise ValueError("sidecar keys are not unique")
    captions = rows.captions if rows.captions is not None else [None] * n
    if len(captions) != n:
        raise ValueError(f"sidecar has {n} keys but {len(captions)} captions")
    lengths = [len(c) for c in rows.classes]
    if any(len(p) != k for p, k in zip(rows.probs, lengths)):
        raise ValueError("sidecar class and prob lists differ in length")
    flat_probs = np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in rows.probs]) if n else []
    scores16 = np.where(np.isfinite(scores), np.clip(scores, -_FLOAT16_MAX, _FLOAT16_MAX), scores).astype(np.float16)
    columns = [
        pa.array(rows.keys, type=pa.string()),
        pa.array(np.full(n, grid_h, dtype=np.int16)),
        pa.array(np.full(n, grid_w, dtype=np.int16)),
        _list_array(pa.array(scores16.ravel(), type=pa.float16()), [grid_h * grid_w] * n),
        _list_array(pa.array([c for cs in rows.classes for c in cs], type=pa.string()), lengths),
        _list_array(pa.array(np.asarray(flat_probs, dtype=np.float32), type=pa.float32()), lengths),
        pa.array(captions, type=pa.string()),
    ]
    schema = SCHEMA.with_metadata(_metadata(governor, {**settings, "grid": [grid_h, grid_w]}, extra))
    return pa.Table.from_arrays(columns, schema=schema)


def write_sidecar(
    path: str | Path,
    rows: SidecarRows,
    governor: str,
    settings: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a sidecar atomically (temporary file + ``os.replace``); returns its path."""
    table = to_arrow(rows, governor, settings, extra)
    return atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def _decode_metadata(path: Path, raw: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    meta = {k.decode(): v.decode() for k, v in (raw or {}).items() if k.startswith(META_PREFIX.encode())}
    meta = {k[len(META_PREFIX) :]: v for k, v in meta.items()}
    if not {"format_version", "governor", "settings"} <= meta.keys():
        raise ConfigError(f"sidecar {path} has no juicer metadata: not a sidecar written by lightning_juicer")
    try:
        out = {k: v if k == "governor" else json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as e:
        raise ConfigError(f"sidecar {path} has unreadable metadata: {e}") from e
    if int(out["format_version"]) > FORMAT_VERSION:
        raise ConfigError(
            f"sidecar {path} has format version {out['format_version']}; this lightning_juicer reads up to "
            f"{FORMAT_VERSION}: upgrade it or rerun the vision pass"
        )
    return out


def sidecar_info(path: str | Path) -> SidecarInfo:
    """Metadata of a sidecar from its Parquet footer (no row data is read)."""
    path = Path(path)
    try:
        footer = pq.read_metadata(path)
        raw = footer.schema.to_arrow_schema().metadata
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"sidecar {path} cannot be read: {' '.join(str(e).split())}") from e
    meta = _decode_metadata(path, raw)
    settings = meta.pop("settings")
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "governor")}
    grid = tuple(int(g) for g in settings.get("grid", (0, 0)))
    return SidecarInfo(path, int(meta["format_version"]), meta["governor"], settings, grid, footer.num_rows, extra)


def _fmt_grid(grid: Sequence[int] | None) -> str:
    return "x".join(str(int(g)) for g in grid) if grid is not None else "?"


def check_sidecar(
    path: str | Path,
    governor: str | None = None,
    grid: Sequence[int] | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    key: str = "data.init_args.governor",
    remedy: str = "rerun the vision pass",
) -> SidecarInfo:
    """The sidecar's metadata, or a one-line ConfigError when its governor, grid or given settings differ."""
    info = sidecar_info(path)
    wanted_gov = governor_id(governor) if governor is not None else info.governor
    wanted_grid = tuple(int(g) for g in grid) if grid is not None else info.grid
    if wanted_gov != info.governor or wanted_grid != info.grid:
        raise ConfigError(
            f"{key}: sidecar {info.path} was written by governor {info.governor} with grid {_fmt_grid(info.grid)}; "
            f"the config asks for {wanted_gov} / {_fmt_grid(wanted_grid)}: {remedy} or fix {key}"
        )
    for name, value in (settings or {}).items():
        stored = info.settings.get(name)
        if json.loads(json.dumps(value)) != stored:
            raise ConfigError(
                f"{key}: sidecar {info.path} was written with {name}={json.dumps(stored)}; "
                f"the config asks for {name}={json.dumps(value)}: {remedy} or fix the config"
            )
    return info


# Settings that only filter the evidence at use time; sidecars that differ in them hold the same values.
USE_TIME_SETTINGS = ("threshold", "max_classes")


def check_sidecars(
    paths: Sequence[str | Path], governor: str | None = None, *, key: str = "data.init_args.governor.name"
) -> list[SidecarInfo]:
    """Every sidecar's footer, checked to come from one governor with one grid and one set of settings.

    A ConfigError names the first two files that differ and the differing settings (or the configured
    ``governor`` the first file was not written by); only Parquet footers are read.
    """
    infos = [sidecar_info(p) for p in paths]
    if not infos:
        return infos
    if governor is not None:
        check_sidecar(infos[0].path, governor=governor, key=key)
    first = infos[0]

    def identity(info: SidecarInfo) -> dict[str, Any]:
        settings = {k: v for k, v in info.settings.items() if k not in USE_TIME_SETTINGS}
        return {"governor": info.governor, "format_version": info.format_version, **settings}

    wanted = identity(first)
    for info in infos[1:]:
        found = identity(info)
        if found != wanted:
            names = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
            diff = ", ".join(f"{k}={json.dumps(wanted.get(k))} vs {json.dumps(found.get(k))}" for k in names[:3])
            raise ConfigError(
                f"{key}: sidecars {first.path} and {info.path} were written with different governors or settings "
                f"({diff}); rerun the vision pass on every shard with one governor"
            )
    return infos


class SidecarTable:
    """A whole sidecar in memory, with O(1) lookup by key; load once per shard (e.g. in a DataLoader worker)."""

    def __init__(self, table: pa.Table, path: Path | None = None) -> None:
        meta = _decode_metadata(path or Path("<table>"), table.schema.metadata)
        self.path = path
        self.format_version = int(meta["format_version"])
        self.governor: str = meta["governor"]
        self.settings: dict[str, Any] = meta["settings"]
        reserved = ("format_version", "governor", "settings")
        self.extra: dict[str, Any] = {k: v for k, v in meta.items() if k not in reserved}
        self.grid: tuple[int, int] = tuple(int(g) for g in self.settings["grid"])
        self.keys: list[str] = table.column("key").to_pylist()
        n, m = len(self.keys), self.grid[0] * self.grid[1]
        scores = table.column("scores").combine_chunks()
        lengths = pc.list_value_length(scores)
        if n and (pc.min(lengths).as_py() != m or pc.max(lengths).as_py() != m):
            raise ConfigError(f"sidecar {self.path} has score lists that do not match its grid {_fmt_grid(self.grid)}")
        self.scores: np.ndarray = scores.flatten().to_numpy(zero_copy_only=False).reshape(n, m)
        classes = table.column("classes").combine_chunks()
        offsets = classes.offsets.to_numpy()
        self._offsets = offsets - offsets[0] if len(offsets) else np.zeros(1, dtype=np.int32)
        self._classes: list[str] = classes.flatten().to_pylist()
        self._probs: np.ndarray = table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.captions: list[str | None] = table.column("caption").to_pylist()
        self.index: dict[str, int] = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> SidecarEntry:
        return self.entry(self.index[key])

    def entry(self, i: int) -> SidecarEntry:
        """Row ``i`` as a SidecarEntry."""
        o0, o1 = int(self._offsets[i]), int(self._offsets[i + 1])
        return SidecarEntry(self.scores[i], self._classes[o0:o1], self._probs[o0:o1], self.captions[i])

    def get(self, key: str) -> SidecarEntry | None:
        """The entry of a sample key, or None when the sidecar has no row for it."""
        i = self.index.get(key)
        return None if i is None else self.entry(i)

    def rows(self) -> SidecarRows:
        """All columns as SidecarRows (e.g. to add captions and write the sidecar back)."""
        probs = [self._probs[self._offsets[i] : self._offsets[i + 1]] for i in range(len(self))]
        classes = [self._classes[self._offsets[i] : self._offsets[i + 1]] for i in range(len(self))]
        return SidecarRows(list(self.keys), self.scores.copy(), self.grid, classes, probs, list(self.captions))


def read_sidecar(path: str | Path) -> SidecarTable:
    """Load a sidecar into a SidecarTable (scores as one float16 [n, m] array, key -> row dict)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"sidecar {path} cannot be read: {' '.join(str(e).split())}") from e
    return SidecarTable(table, path)
