"""How many object patches a governor keeps on the real-photo benchmark, measured against the pasted items' masks.

The definitions are those of ``lightning_juicer.governor.quality`` (the synthetic quality gate):
an **object patch** is a cell of the governor's grid of which at least ``OBJECT_PATCH_THRESHOLD``
(25 %) of the pixels belong to a pasted item (the union of the sample's ``objects[].mask``);
**coverage** of a selection is kept object patches / object patches, pooled over images. Top-k
keeps ``keep_count(m, r)`` patches with the highest Eq. 2 scores; the random baseline keeps as many
uniformly at random (expected coverage k / m). Images are the benchmark's composites (square), resized
to the governor's input size as the vision pass does; masks are resampled to the same size (box
filter) before the cells are averaged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from lightning_juicer.io.decode import load_rgb
from lightning_juicer.io.shards import expand_shards
from lightning_juicer.io.writers import decode_mask
from lightning_juicer.governor.quality import OBJECT_PATCH_THRESHOLD, to_tensor
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.selection import keep_count, select_random, select_topk


def read_samples(shards: str, limit: int | None = None) -> Iterator[tuple[str, Image.Image, dict]]:
    """(key, RGB image, ground-truth JSON) of the benchmark's shards, in shard and key order (webdataset's
    reading, selection and decoding; the image through the project's decoder, ``io.decode.load_rgb``)."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(expand_shards(shards, "shards")), wds.tarfile_to_samples(),
        wds.select(lambda sample: "json" in sample and "jpg" in sample),
        wds.decode(wds.handle_extension("jpg", load_rgb)), wds.to_tuple("__key__", "jpg", "json"),
    )
    return itertools.islice(pipeline, limit)


def patch_object_fraction(meta: dict, image_size: tuple[int, int], patch_size: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by the sample's items, float32 [gh * gw] in row-major order."""
    union = None
    for obj in meta["objects"]:
        mask = decode_mask(obj["mask"])
        union = mask if union is None else union | mask
    height, width = image_size
    if union is None:
        return np.zeros((height // patch_size[0]) * (width // patch_size[1]), dtype=np.float32)
    resized = Image.fromarray(union.astype(np.float32), mode="F").resize((width, height), Image.BOX)
    cells = np.asarray(resized, dtype=np.float32)
    gh, gw = height // patch_size[0], width // patch_size[1]
    cells = cells[: gh * patch_size[0], : gw * patch_size[1]].reshape(gh, patch_size[0], gw, patch_size[1])
    return cells.mean(axis=(1, 3)).reshape(-1)


@torch.no_grad()
def governor_coverage(scorer: PatchScorer, shards: str, num_images: int | None = 200, keep_ratio: float = 0.5,
                      batch_size: int = 32, seed: int = 0,
                      object_threshold: float = OBJECT_PATCH_THRESHOLD) -> dict[str, float]:
    """Object-patch coverage of the governor's top-k and of random selection on the benchmark's shards."""
    scorer.eval()
    size, patch = tuple(scorer.image_size), tuple(scorer.patch_size)
    generator = torch.Generator().manual_seed(seed)
    kept_top = kept_random = object_patches = patches = images = 0
    per_photo: dict[str, list[int]] = {}

    def run(batch_images: list[np.ndarray], batch_fraction: list[np.ndarray], photos: list[str]) -> None:
        nonlocal kept_top, kept_random, object_patches, patches, images
        out = scorer(to_tensor(np.stack(batch_images), scorer.mean, scorer.std))
        is_object = torch.from_numpy(np.stack(batch_fraction) >= object_threshold)
        if out.scores.shape != is_object.shape:
            raise ValueError(f"scores {tuple(out.scores.shape)} do not match the grid of {size} / {patch}")
        n, m = is_object.shape
        k = keep_count(m, keep_ratio)
        top = is_object.gather(1, select_topk(out.scores, k)).sum(1)
        for photo, kept, total in zip(photos, top.tolist(), is_object.sum(1).tolist()):
            counts = per_photo.setdefault(photo, [0, 0])
            counts[0], counts[1] = counts[0] + int(kept), counts[1] + int(total)
        kept_top += int(top.sum())
        kept_random += int(is_object.gather(1, select_random(n, m, k, generator)).sum())
        object_patches += int(is_object.sum())
        patches += n * m
        images += n

    pending: tuple[list, list, list] = ([], [], [])
    for _, image, meta in read_samples(shards, num_images):
        pending[0].append(np.asarray(image.resize((size[1], size[0]), Image.BICUBIC), dtype=np.uint8))
        pending[1].append(patch_object_fraction(meta, size, patch))
        pending[2].append(meta["context"]["photo"])
        if len(pending[0]) == batch_size:
            run(*pending)
            pending = ([], [], [])
    if pending[0]:
        run(*pending)
    return {
        "num_images": images,
        "keep_ratio": keep_ratio,
        "grid": [size[0] // patch[0], size[1] // patch[1]],
        "object_patches": object_patches,
        "object_patch_share": object_patches / max(patches, 1),
        "coverage_topk": kept_top / max(object_patches, 1),
        "coverage_random": kept_random / max(object_patches, 1),
        "coverage_topk_by_photo": {p: kept / max(total, 1) for p, (kept, total) in sorted(per_photo.items())},
    }


def main_summary(result: dict, shards: str, governor: str) -> str:
    """One readable paragraph of a coverage result."""
    return (f"governor {governor} on {result['num_images']} images of {shards} (grid {result['grid'][0]}x"
            f"{result['grid'][1]}, object patches {100 * result['object_patch_share']:.1f} % of all): top "
            f"{100 * result['keep_ratio']:.0f} % keeps {100 * result['coverage_topk']:.1f} % of the object patches, "
            f"random {100 * result['coverage_random']:.1f} %")
