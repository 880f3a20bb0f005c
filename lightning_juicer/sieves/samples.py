"""The samples a sieve chooses among, in a fixed order: read from embeddings files, or (for a sieve that
needs no embeddings, e.g. Random) from the shards' tar headers alone: no model, no embeddings pass."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.keeplist import shard_ids
from lightning_juicer.io.shards import expand_shards
from lightning_juicer.io.embeddings import EmbeddingSet, read_embeddings
from lightning_juicer.io.tars import IMAGE_EXTS

log = logging.getLogger(__name__)

# A sample is a candidate when it has an image member (the extensions the training loader decodes).
BLOCK = 65536  # rows per block of the degenerate-row check


def shard_sample_keys(url: str) -> tuple[list[str], int]:
    """Keys of a tar shard's samples that have an image member, in tar order, and how many keys have none.

    A local shard is read header by header (seeking past the data); a remote one is streamed.
    """
    images: dict[str, bool] = {}
    try:
        with (tarfile.open(url) if Path(url).is_file() else tarfile.open(fileobj=wds.gopen(url), mode="r|*")) as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
                if key is not None:
                    images[key] = images.get(key, False) or ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS
    except (OSError, tarfile.TarError) as e:
        raise ConfigError(f"shards: {url} cannot be read as a tar shard ({' '.join(str(e).split())})") from e
    keys = [key for key, has_image in images.items() if has_image]
    return keys, len(images) - len(keys)


def samples_from_shards(spec: str | list[str]) -> tuple[EmbeddingSet, dict[str, int]]:
    """Every sample with an image in the shards (no embedding columns), and the count of keys without an image."""
    urls = expand_shards(spec, "shards")
    keys: list[str] = []
    shards: list[str] = []
    no_image = 0
    for url, ident in zip(urls, shard_ids(urls, unique="shards")):
        found, missing = shard_sample_keys(url)
        keys += found
        shards += [ident] * len(found)
        no_image += missing
    if no_image:
        log.warning("sieve: %d sample key(s) of the shards have no image member and are not candidates", no_image)
    return EmbeddingSet(keys, shards, {}, None, []), {"no_image": no_image}


def read_samples(embeddings: str | list[str] | None, shards: str | list[str] | None, needs: tuple[str, ...],
                 name: str) -> tuple[EmbeddingSet, dict[str, int]]:
    """The candidates from ``embeddings`` files, or from ``shards`` when the sieve needs no embeddings."""
    if embeddings and shards:
        raise ConfigError("shards: give the embeddings files or the shards, not both")
    if shards:
        if needs:
            raise ConfigError(f"shards: sieve {name} reads the {'/'.join(needs)} embeddings: run the embeddings "
                              "pass and set embeddings instead (only a sieve that needs no embeddings, e.g. random, "
                              "reads shards)")
        return samples_from_shards(shards)
    if not embeddings:
        hint = " (or shards, for this sieve)" if not needs else ""
        raise ConfigError(f"embeddings: not set; give the embeddings pass's files{hint}, e.g. "
                          "--embeddings 'data/train/{00000..00007}.emb.parquet'")
    return read_embeddings(expand_shards(embeddings, "embeddings"), columns=needs), {}


def degenerate(emb: EmbeddingSet, fields: tuple[str, ...]) -> np.ndarray:
    """Rows whose embedding in any of ``fields`` is all zeros or not finite."""
    bad = np.zeros(len(emb), dtype=bool)
    for name in fields:
        if name not in emb.arrays:
            raise ConfigError(f"embeddings: the files hold no {name!r} embeddings; rerun the embeddings pass "
                              f"with {'governor.name' if name == 'cls' else 'reference.name'} set")
        values = emb.arrays[name]
        for start in range(0, len(values), BLOCK):  # in row blocks: no temporary as large as the embeddings
            part = values[start : start + BLOCK]
            bad[start : start + BLOCK] |= ~np.isfinite(part).all(axis=1) | (np.abs(part).sum(axis=1) == 0)
    return bad
