"""Byte-reproducible dataset writers shared by the generated datasets (synthetic shapes, real-photo benchmark).

* shards in img2dataset's webdataset layout: ``{00000..N}.tar`` holding ``<key>.<ext>`` members
  (key ``shard * 10**4 + i``, nine digits, as img2dataset numbers them), with ``sizes.json`` and one
  ``<shard>_stats.json`` per shard, which ``lightning_juicer.io.shards.count_samples`` reads;
* tar members with fixed metadata (mtime 0, uid/gid 0, no user names, mode 0644) in sorted order;
* JSON with sorted keys, JPEG/PNG bytes from PIL with fixed settings, masks as row-major run lengths.

Same inputs, same bytes: the generators seed every sample from (seed, split, index) and these
writers add nothing that depends on the clock, the user or the file system.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

KEY_STRIDE = 10**4


def encode_mask(mask: np.ndarray) -> dict:
    """Row-major run-length encoding {"size": [h, w], "counts": [...]}, starting with a run of zeros."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_mask(rle: dict) -> np.ndarray:
    """Decode a row-major run-length encoding into a bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(h, w)


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """Deterministic JPEG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic, lossless PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def karpathy_image(imgid: int, filename: str, captions: list[str], tokens: Callable[[str], list[str]],
                   split: str = "test", filepath: str = "images") -> dict:
    """One image entry of a Karpathy-split JSON (``dataset_coco.json`` layout): sentence ids ``len(captions) * imgid + j``."""
    sentids = [len(captions) * imgid + j for j in range(len(captions))]
    sentences = [{"raw": c, "tokens": tokens(c), "imgid": imgid, "sentid": s} for c, s in zip(captions, sentids)]
    return {"filepath": filepath, "filename": filename, "imgid": imgid, "split": split, "sentids": sentids,
            "sentences": sentences}


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a member with fixed metadata so archives are byte-reproducible."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A USTAR archive of (name, bytes) members in sorted name order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            add_tar_member(tar, name, data)


def sample_key(shard: int, position: int) -> str:
    """img2dataset's key of the position-th sample of a shard."""
    return f"{shard * KEY_STRIDE + position:09d}"


def num_shards(count: int, per_shard: int) -> int:
    """Number of shards needed for count samples."""
    return max(1, math.ceil(count / max(1, per_shard)))


def shard_pattern(directory: Path, n_shards: int) -> str:
    """Brace pattern covering shards 0..n_shards-1 of a folder."""
    return str(directory / f"{{00000..{n_shards - 1:05d}}}.tar")


def write_shards(out_dir: Path, count: int, per_shard: int,
                 make_sample: Callable[[int, str], dict[str, bytes]]) -> int:
    """Write ``count`` samples as img2dataset shards plus ``sizes.json`` / ``*_stats.json``; returns the shard count.

    ``make_sample(index, key)`` returns the sample's members ``{ext: bytes}`` (``jpg``, ``txt``, ``json``...).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    per = max(1, per_shard)
    if per > KEY_STRIDE:
        raise ValueError(f"at most {KEY_STRIDE} samples per shard (img2dataset keys), got {per}")
    n_shards = num_shards(count, per)
    sizes: dict[str, int] = {}
    for shard in range(n_shards):
        start, stop = shard * per, min(count, (shard + 1) * per)
        name = f"{shard:05d}"
        members: list[tuple[str, bytes]] = []
        for i in range(stop - start):
            key = sample_key(shard, i)
            members += [(f"{key}.{ext}", data) for ext, data in make_sample(start + i, key).items()]
        write_tar(out_dir / f"{name}.tar", members)
        sizes[f"{name}.tar"] = stop - start
        stats = {"count": stop - start, "successes": stop - start, "failed_to_download": 0, "failed_to_resize": 0}
        write_json(out_dir / f"{name}_stats.json", stats)
    write_json(out_dir / "sizes.json", sizes)
    return n_shards
