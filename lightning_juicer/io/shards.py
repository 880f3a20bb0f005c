"""Shard lists: expanding brace/``::`` URL specs, checking local paths, and counting samples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import webdataset as wds

from lightning_juicer.errors import ConfigError

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def is_remote(url: str) -> bool:
    """True for a shard URL that is not a local file: a ``pipe:`` command or a ``scheme:`` URL (``https://``,
    ``s3://``, ...) as webdataset opens them, unless a local path of that name exists."""
    return bool(_SCHEME.match(url)) and not Path(url).exists()


def expand_shards(spec: str | list[str], key: str) -> list[str]:
    """Expand shard specs (brace patterns, ``a::b`` joins, or a list of those) into a URL list."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls = [url for s in specs if s.strip() for url in wds.shardlists.expand_urls(s.strip())]
    if not urls:
        raise ConfigError(f"{key}: the shard list is empty; give shard paths like '/data/cc3m/{{00000..00331}}.tar'")
    missing = [u for u in urls if not is_remote(u) and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{key}: shard file not found: {missing[0]}{more}")
    return urls


def shard_sizes(urls: list[str]) -> dict[str, int | None]:
    """Samples per local shard from ``sizes.json`` (read once per folder) or img2dataset ``*_stats.json``; None if unknown."""
    out: dict[str, int | None] = {}
    sizes_cache: dict[Path, dict] = {}
    for url in urls:
        if is_remote(url):
            out[url] = None
            continue
        path = Path(url)
        if path.parent not in sizes_cache:
            sizes_file = path.parent / "sizes.json"
            sizes_cache[path.parent] = json.loads(sizes_file.read_text()) if sizes_file.is_file() else {}
        sizes = sizes_cache[path.parent]
        stats = path.with_name(path.stem + "_stats.json")
        if path.name in sizes:
            out[url] = int(sizes[path.name])
        elif stats.is_file():
            out[url] = int(json.loads(stats.read_text())["successes"])
        else:
            out[url] = None
    return out


def count_samples(urls: list[str]) -> int | None:
    """Number of samples in local shards, from ``sizes.json`` or img2dataset ``*_stats.json``; None if unknown."""
    sizes = shard_sizes(urls).values()
    return None if None in sizes else sum(sizes)
