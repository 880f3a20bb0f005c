"""Reading input shards for a pass: the shard plan (``ShardJob``) and whole shards as batches of images.

Every pass reads webdataset shards; a DataLoader worker takes whole shards (``ShardBatches``) and
yields each one as batches ``{shard, key, image, last, counts, error}`` (+ ``caption``), the last
batch flagged and carrying the shard's counts, so the pass's writer can finish the shard the moment
its last batch arrives. Bad samples are counted skips: ``no_image``, ``corrupt_image``,
``duplicate_key``, ``no_caption`` (when captions are read) and ``bad_key`` (a tar member without a
key); a shard that cannot be read to its end carries ``error``.

With ``encoded`` (the vision pass decoding on the GPU) complete JPEGs are not decoded in the worker:
the batch carries their bytes (``jpeg``) and rows (``jpeg_rows``) for the device to decode, and
``image`` holds only the other rows, in order (other formats and truncated JPEGs, decoded here as
usual): nothing is stacked, pinned or transferred for the rows the device fills.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.decode import DraftedDecoder, complete_jpeg
from lightning_juicer.io.shards import expand_shards, shard_sizes
from lightning_juicer.io.tars import CAPTION_EXTS, IMAGE_EXTS, tar_samples

log = logging.getLogger(__name__)

_LOG_FIRST = 10


@dataclass(frozen=True)
class ShardJob:
    """One input shard: its position in the shard list, URL, output file and sample count (None if unknown).

    A pass that needs more per shard (the text pass's source sidecar) subclasses it."""

    index: int
    url: str
    output: Path
    size: int | None


def plan_jobs(shards: Any, output_path: Callable[[str], Path], key: str, what: str) -> list[ShardJob]:
    """The shards with their output files and sizes; refuses two shards sharing one output file (naming ``key``)."""
    urls = expand_shards(shards, "shards")
    jobs, seen = [], {}
    sizes = shard_sizes(urls)
    for index, url in enumerate(urls):
        size = sizes[url]
        path = output_path(url)
        if path in seen:
            raise ConfigError(f"{key}: shards {seen[path]} and {url} would share the {what} {path}")
        seen[path] = url
        jobs.append(ShardJob(index, url, path, size))
    return jobs


_logged: Counter[str] = Counter()


def count_skip(counts: Counter[str], reason: str, key: str, url: str, detail: str = "") -> None:
    """Count a skipped sample; log the first few of each reason and then every 1000th."""
    counts[reason] += 1
    _logged[reason] += 1
    if _logged[reason] <= _LOG_FIRST or _logged[reason] % 1000 == 0:
        log.warning("pass: skipped %s in %s (%s)%s", key, url, reason, f": {detail}" if detail else "")


def _caption(sample: dict) -> str | None:
    raw = next((sample[ext] for ext in CAPTION_EXTS if ext in sample), None)
    try:
        text = raw.decode("utf-8").strip() if raw is not None else ""
    except UnicodeDecodeError:
        return None
    return text or None


def shard_batches(
    job: ShardJob, transform: Callable, batch_size: int, image_size: tuple[int, int], captions: bool = False,
    encoded: bool = False,
) -> Iterator[dict]:
    """One shard as batches ``{shard, key, image uint8, last, counts, error}``; the last one carries the counts.

    With ``captions`` the batches also carry ``caption`` (str list) and a sample without a readable
    caption is a counted ``no_caption`` skip. With ``encoded`` complete JPEGs stay undecoded (``jpeg``,
    ``jpeg_rows``; see the module's docstring).
    """
    errors: list[str] = []

    def on_error(exn: Exception) -> bool:
        first = str(exn.args[0]).split(" @ ")[0] if exn.args else ""
        errors.append(f"{type(exn).__name__}: {' '.join(first.split())[:300]}".rstrip(": "))
        return True

    def unkeyed(name: str, url: str) -> None:
        count_skip(counts, "bad_key", name, url, "a tar member name without a key")

    decode = DraftedDecoder(transform)
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    keys: list[str] = []
    images: list[torch.Tensor | bytes] = []
    texts: list[str | None] = []
    held: dict | None = None
    total = 0
    for sample in tar_samples(unkeyed, on_error)(iter([{"url": job.url}])):
        total += 1
        key = str(sample.get("__key__"))
        data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        text = _caption(sample) if captions else None
        reason = ("duplicate_key" if key in seen else "no_image" if data is None
                  else "no_caption" if captions and text is None else None)
        if reason:
            count_skip(counts, reason, key, job.url)
            continue
        try:
            image = data if encoded and complete_jpeg(data) else transform(decode(data))
        except Exception as exn:  # PIL raises many types for broken files
            count_skip(counts, "corrupt_image", key, job.url, repr(exn))
            continue
        seen.add(key)
        keys.append(key)
        images.append(image)
        texts.append(text)
        if len(keys) == batch_size:
            if held is not None:
                yield held
            held, keys, images, texts = _batch(job, keys, images, image_size, texts if captions else None), [], [], []
    if held is not None and keys:
        yield held
        held = None
    last = held if held is not None else _batch(job, keys, images, image_size, texts if captions else None)
    counted = {"in": total + counts["bad_key"], "skipped": dict(sorted(counts.items()))}
    last.update(last=True, counts=counted, error="; ".join(dict.fromkeys(errors)) or None)
    yield last


def _batch(
    job: ShardJob, keys: list[str], images: list[torch.Tensor | bytes], image_size: tuple[int, int], texts: list | None
) -> dict:
    """Stack the decoded images; undecoded JPEG bytes go to ``jpeg`` / ``jpeg_rows`` (not into ``image``)."""
    rows = [i for i, image in enumerate(images) if isinstance(image, bytes)]
    decoded = [image for image in images if not isinstance(image, bytes)]
    stacked = torch.stack(decoded) if decoded else torch.empty(0, 3, *image_size, dtype=torch.uint8)
    batch = {"shard": job.index, "key": list(keys), "image": stacked, "last": False, "counts": None, "error": None}
    if rows:
        batch.update(jpeg=[images[i] for i in rows], jpeg_rows=rows)
    if texts is not None:
        batch["caption"] = list(texts)
    return batch


class ShardBatches(IterableDataset):
    """Whole shards per DataLoader worker (webdataset's ``split_by_worker``), batched within each shard."""

    def __init__(self, jobs: list[ShardJob], transform: Callable, batch_size: int, image_size: tuple[int, int],
                 captions: bool = False, encoded: bool = False) -> None:
        super().__init__()
        self.jobs = jobs
        self.transform = transform
        self.batch_size = batch_size
        self.image_size = image_size
        self.captions = captions
        self.encoded = encoded

    def __iter__(self) -> Iterator[dict]:
        for job in wds.split_by_worker(self.jobs):
            yield from shard_batches(job, self.transform, self.batch_size, self.image_size, self.captions,
                                     self.encoded)
