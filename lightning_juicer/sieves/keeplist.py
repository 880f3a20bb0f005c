"""Keep lists: which samples a sieve kept, with the sieve's parameters and the fraction it achieved.

One JSON file::

    {"format_version": 1, "sieve": "semdedup", "params": {...}, "target_fraction": 0.5,
     "achieved_fraction": 0.5, "num_candidates": 4000, "num_kept": 2000,
     "counts": {"degenerate_embedding": 0, "empty_clusters": 0, ...},
     "embeddings": ["data/.../00000.emb.parquet", ...], "created": "...",
     "shards": {"00000.tar": ["00000_0000", ...], ...}}

Keys are grouped by the file name of their shard, so a DataModule can refuse a list made for other
shards and look samples up by (shard, key).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.sidecar import _REMOTE, _shard_name, atomic_write

FORMAT_VERSION = 1


def check_fraction(value: float, key: str) -> float:
    """A keep fraction in (0, 1], else a one-line ConfigError naming ``key``."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{key}: {value} is outside (0, 1]")
    return value


@dataclass
class KeepList:
    """A loaded keep list: kept keys per shard file name, and the manifest fields."""

    shards: dict[str, set[str]]
    info: dict[str, Any]

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.shards.values())

    def __contains__(self, shard_and_key: tuple[str, str]) -> bool:
        shard, key = shard_and_key
        return key in self.shards.get(shard, ())


def write_keep_list(
    path: str | Path,
    sieve: str,
    params: Mapping[str, Any],
    kept: Iterable[tuple[str, str]],
    num_candidates: int,
    target_fraction: float,
    counts: Mapping[str, int] | None = None,
    embeddings: list[str] | None = None,
) -> dict[str, Any]:
    """Write a keep list atomically from (shard name, key) pairs; returns the manifest without the keys."""
    shards: dict[str, list[str]] = {}
    for shard, key in kept:
        shards.setdefault(shard, []).append(key)
    num_kept = sum(len(k) for k in shards.values())
    info = {
        "format_version": FORMAT_VERSION,
        "sieve": sieve,
        "params": dict(params),
        "target_fraction": target_fraction,
        "achieved_fraction": round(num_kept / num_candidates, 6) if num_candidates else 0.0,
        "num_candidates": num_candidates,
        "num_kept": num_kept,
        "counts": dict(counts or {}),
        "embeddings": list(embeddings or []),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    body = {**info, "shards": {name: sorted(keys) for name, keys in sorted(shards.items())}}
    atomic_write(path, lambda f: f.write(json.dumps(body, indent=1).encode()))
    return info


def read_keep_list(path: str | Path, key: str = "data.init_args.keep_list") -> KeepList:
    """Load a keep list; a missing or malformed file is a ConfigError naming ``key``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: keep list not found: {path}")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        shards = {str(name): set(map(str, keys)) for name, keys in body.pop("shards").items()}
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"{key}: {path} is not a keep list written by a sieve ({e})") from e
    return KeepList(shards, body)


def shard_keys(url: str) -> set[str]:
    """The webdataset sample keys of a local tar shard, from its member headers only."""
    with tarfile.open(url) as tar:
        return {base_plus_ext(name)[0] for name in tar.getnames() if base_plus_ext(name)[0] is not None}


def check_keep_list(keep: KeepList, urls: list[str], key: str = "data.init_args.keep_list") -> int:
    """Refuse a keep list naming shards or keys absent from ``urls``; returns the kept count over ``urls``.

    Keys are checked against the tar headers of local shards (remote shards: by shard name only).
    """
    by_name = {_shard_name(url): url for url in urls}
    foreign = sorted(set(keep.shards) - set(by_name))
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ConfigError(f"{key}: the keep list names shard {foreign[0]}{more}, which is not among the training shards")
    for name, kept in keep.shards.items():
        url = by_name[name]
        if _REMOTE.match(url) and not Path(url).exists():
            continue
        absent = sorted(kept - shard_keys(url))
        if absent:
            raise ConfigError(
                f"{key}: the keep list names {len(absent)} key(s) absent from shard {url}, e.g. {absent[0]!r}; "
                "it was made for other shards"
            )
    return len(keep)


class KeepFilter:
    """Pipeline stage: passes samples on the keep list, drops the others as counted ``not_in_keep_list``."""

    def __init__(self, keep: KeepList, drops: Any = None) -> None:
        self.keep = keep
        self.drops = drops
        self._url: str | None = None
        self._keys: set[str] = set()

    def counting(self, drops: Any) -> KeepFilter:
        """The same filter reporting to ``drops`` (a DropCounter of one loader)."""
        return KeepFilter(self.keep, drops)

    def __call__(self, sample: dict) -> dict | None:
        url = sample.get("__url__", "")
        if url != self._url:
            self._url, self._keys = url, self.keep.shards.get(_shard_name(url) or "", set())
        if sample.get("__key__") in self._keys:
            return sample
        if self.drops is not None:
            self.drops.drop("not_in_keep_list", str(sample.get("__key__")))
        return None
