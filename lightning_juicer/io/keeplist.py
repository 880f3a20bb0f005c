"""Keep lists: which samples a sieve kept, with the sieve's parameters and the fraction it achieved.

One JSON file::

    {"format_version": 1, "sieve": "semdedup", "params": {...}, "target_fraction": 0.5,
     "achieved_fraction": 0.5, "num_candidates": 4000, "num_kept": 2000,
     "counts": {"degenerate_embedding": 0, "empty_clusters": 0, ...},
     "embeddings": ["data/.../00000.emb.parquet", ...], "created": "...",
     "shards": {"cc3m/00000.tar": ["00000_0000", ...], "laion/00000.tar": [...], ...}}

Keys are grouped by their shard's identity: its path relative to the deepest folder common to all
the sieved shards (``shard_ids``), so ``a/00000.tar`` and ``b/00000.tar`` (img2dataset writes
``00000.tar`` in every folder) stay apart. A DataModule matches an identity to the one training
shard whose path ends with it, so the data may move to another root; format 1 lists (keyed by file
name only) still load when the name matches exactly one training shard, and an identity matching
several is refused.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.io.shards import is_remote

FORMAT_VERSION = 2


def check_fraction(value: float, key: str) -> float:
    """A keep fraction in (0, 1], else a one-line ConfigError naming ``key``."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{key}: {value} is outside (0, 1]")
    return value


@dataclass
class KeepList:
    """A loaded keep list: kept keys per shard identity (``shard_ids``), and the manifest fields."""

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
    """Write a keep list atomically from (shard identity, key) pairs; returns the manifest without the keys."""
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
    if int(body.get("format_version", 1)) > FORMAT_VERSION:
        raise ConfigError(f"{key}: {path} has format version {body['format_version']}; this lightning_juicer reads "
                          f"up to {FORMAT_VERSION}")
    body["path"] = str(path)
    return KeepList(shards, body)


def shard_path(url: str) -> str:
    """The path part of a shard URL: a local file made absolute, the tar of a ``pipe:`` command, a URL as is."""
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if ".tar" in t]
        return tokens[-1] if tokens else url
    if is_remote(url):
        return url
    return os.path.abspath(url)


def shard_ids(urls: list[str], unique: str | None = None) -> list[str]:
    """Each shard's identity: its path relative to the deepest folder common to all ``urls`` ('/'-separated).

    Shards of one folder are named by file name alone (as format 1 lists were); ``a/00000.tar`` and
    ``b/00000.tar`` keep their folder. With ``unique`` (a config key), a shard listed twice is a
    ConfigError (embeddings files written before ``shard_url`` was recorded know only the file name).
    """
    if unique and len(set(urls)) < len(urls):
        twice = next(u for u in urls if urls.count(u) > 1)
        raise ConfigError(f"{unique}: two embeddings files are of shard {twice}; rerun the embeddings pass "
                          "(it records each shard's path) or sieve the folders separately")
    parts = [shard_path(url).replace("\\", "/").split("/") for url in urls]
    if not parts:
        return []
    common = len(parts[0]) - 1
    for p in parts[1:]:
        common = min(common, len(p) - 1)
        while common and p[:common] != parts[0][:common]:
            common -= 1
    return ["/".join(p[common:]) for p in parts]


def match_shards(keep: KeepList, urls: list[str], key: str = "data.init_args.keep_list") -> dict[str, str]:
    """Training shard URL -> keep-list identity, each identity matched to the one URL whose path ends with it.

    A ConfigError names the keep list when an identity matches no training shard, or several (a
    format 1 list keyed by file name on shards from several folders), or two identities one shard.
    """
    where = keep.info.get("path", "the keep list")
    paths = {url: "/" + shard_path(url).replace("\\", "/") for url in urls}
    by_name: dict[str, list[str]] = {}
    for url, path in paths.items():
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(url)
    matched: dict[str, str] = {}
    for ident in sorted(keep.shards):
        found = [url for url in by_name.get(ident.rsplit("/", 1)[-1], []) if paths[url].endswith("/" + ident)]
        if not found:
            more = len([i for i in keep.shards if not any(paths[u].endswith("/" + i) for u in urls)]) - 1
            raise ConfigError(f"{key}: {where} names shard {ident}{f' (and {more} more)' if more else ''}, which is "
                              "not among the training shards")
        if len(found) > 1:
            raise ConfigError(f"{key}: {where} names shard {ident}, which matches {len(found)} training shards "
                              f"({found[0]}, {found[1]}); rerun the sieve so the list keys shards by their folder")
        if found[0] in matched:
            raise ConfigError(f"{key}: {where} names training shard {found[0]} twice ({matched[found[0]]} and "
                              f"{ident}); rerun the sieve")
        matched[found[0]] = ident
    return matched


def shard_keys(url: str) -> set[str]:
    """The webdataset sample keys of a local tar shard, from its member headers only."""
    with tarfile.open(url) as tar:
        return {base_plus_ext(name)[0] for name in tar.getnames() if base_plus_ext(name)[0] is not None}


def check_keep_list(keep: KeepList, urls: list[str], key: str = "data.init_args.keep_list") -> dict[str, set[str]]:
    """The kept keys per training shard URL; a ConfigError when the list names other shards or keys, or none.

    Keys are checked against the tar headers of local shards (remote shards: by shard identity only).
    A list that keeps no sample of ``urls`` is refused: training on it could never make a batch.
    """
    where = keep.info.get("path", "the keep list")
    kept = {url: keep.shards[ident] for url, ident in match_shards(keep, urls, key).items()}
    for url, keys in kept.items():
        if is_remote(url):
            continue
        absent = sorted(keys - shard_keys(url))
        if absent:
            raise ConfigError(
                f"{key}: {where} names {len(absent)} key(s) absent from shard {url}, e.g. {absent[0]!r}; "
                "it was made for other shards"
            )
    if not any(kept.values()):
        raise ConfigError(f"{key}: {where} keeps no sample of the training shards; nothing could be trained on "
                          "(rerun the sieve with a larger fraction, or unset data.init_args.keep_list)")
    return kept


class KeepFilter:
    """Pipeline stage: passes samples on the keep list, drops the others as counted ``not_in_keep_list``.

    ``kept`` maps training shard URLs (as the pipeline's ``__url__``) to their kept keys (``check_keep_list``).
    """

    def __init__(self, kept: Mapping[str, set[str]], drops: Any = None) -> None:
        self.kept = kept
        self.drops = drops

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.kept.values())

    def counting(self, drops: Any) -> KeepFilter:
        """The same filter reporting to ``drops`` (a DropCounter of one loader)."""
        return KeepFilter(self.kept, drops)

    def __call__(self, sample: dict) -> dict | None:
        if sample.get("__key__") in self.kept.get(sample.get("__url__", ""), ()):
            return sample
        if self.drops is not None:
            self.drops.drop("not_in_keep_list", str(sample.get("__key__")))
        return None
