"""A shard's captions by webdataset key, read without decoding images, and the word counts of a caption corpus."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import NamedTuple

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from lightning_juicer.io.tars import CAPTION_EXTS
from lightning_juicer.errors import one_line
from lightning_juicer.text.rules import Vocabulary


class ShardCaptions(NamedTuple):
    """A shard's caption bytes by key (None: no caption member), member names without a key, the read error."""

    captions: dict[str, bytes | None]
    bad_keys: int
    error: str | None


def _error(exn: BaseException) -> str:
    return f"{type(exn).__name__}: {one_line(str(exn), 300)}"


def shard_captions(url: str) -> ShardCaptions:
    """The caption bytes of one shard by key, and the read error if it broke.

    Keys are split from member names as webdataset splits them (``base_plus_ext``: the extension
    starts at the first dot of the last path component, so ``dir.v1/k.txt`` is key ``dir.v1/k`` and
    ``../x.txt`` key ``../x``); a file member whose name has no key (``..``, ``x``) is counted.
    """
    captions: dict[str, bytes | None] = {}
    bad_keys = 0
    if Path(url).is_file():  # local tar: skip image bytes instead of reading them
        try:
            with tarfile.open(url) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = base_plus_ext(member.name)
                    if key is None:
                        bad_keys += 1
                        continue
                    captions.setdefault(key, None)
                    if ext.lower() in CAPTION_EXTS:
                        captions[key] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as e:
            return ShardCaptions(captions, bad_keys, _error(e))
        return ShardCaptions(captions, bad_keys, None)
    errors: list[str] = []

    def on_error(exn: Exception) -> bool:
        errors.append(_error(exn))
        return True

    for sample in wds.tarfile_samples(iter([{"url": url}]), handler=on_error):
        captions[str(sample["__key__"])] = next((sample[e] for e in CAPTION_EXTS if e in sample), None)
    return ShardCaptions(captions, bad_keys, "; ".join(errors) or None)


def corpus_vocabulary(urls: list[str]) -> Vocabulary:
    """Word counts of the captions of the given shards."""
    texts = (data.decode("utf-8", "replace") for url in urls for data in shard_captions(url).captions.values() if data)
    return Vocabulary.from_captions(texts)
