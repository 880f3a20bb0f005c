"""How good a governor is on held-out synthetic scenes, measured against the generator's own masks.

Definitions (used by the training script, the quality gate test and the README figure alike):

* **object patch**: a grid cell (the governor's patch, e.g. 8x8 px) of which at least
  ``OBJECT_PATCH_THRESHOLD`` (25 %) of the pixels belong to some object (the union of the
  generator's visible-object masks). Cells with only a sliver of an object edge are not counted.
* **coverage** of a selection: object patches that are kept / object patches, pooled over all
  images (micro average). Top-k keeps ``keep_count(m, r)`` highest-scoring patches per image
  (``select_topk``); the random baseline keeps as many uniformly at random (``select_random``),
  whose expected coverage is k / m (0.5 at r = 0.5).
* **evidence precision / recall**: the evidence of an image is ``class_evidence(probs, names,
  threshold, max_classes)`` (classes with p > threshold, at most ``max_classes``); precision is the
  fraction of evidence classes that are really in the image, recall the fraction of the image's
  distinct object classes that appear in its evidence (both pooled over all images).

Held-out scenes come from their own random stream (``EVAL_STREAM``): scene i of seed s is rendered
by ``render_scene(np.random.default_rng([EVAL_STREAM, s, i]), ...)`` with 1-3 objects, so it never
coincides with a training scene (``TRAIN_STREAM``), a training-time validation scene
(``VAL_STREAM``) or a scene of the synthetic dataset (whose streams are ``[seed, split, index]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from lightning_juicer.synthetic import SHAPE_CLASSES, render_scene
from lightning_juicer.governor.evidence import ClassHead, class_evidence
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.selection import keep_count, select_random, select_topk

OBJECT_PATCH_THRESHOLD = 0.25
TRAIN_STREAM = 7_301
VAL_STREAM = 7_302
EVAL_STREAM = 7_303


class Scenes(NamedTuple):
    """Rendered scenes: images uint8 [N, H, W, 3], multi-hot labels float32 [N, C] (SHAPE_CLASSES order),
    per-patch object-pixel fraction float32 [N, m] (m = gh * gw, row-major grid order), the same per
    class float16 [N, m, C] (visible object masks are disjoint, so it sums to the former) and the grid."""

    images: np.ndarray
    labels: np.ndarray
    patch_fraction: np.ndarray
    patch_class_fraction: np.ndarray
    grid: tuple[int, int]


def render_scenes(
    indices: Sequence[int],
    stream: int,
    seed: int,
    image_size: int = 64,
    patch_size: int = 8,
    max_objects: int = 3,
) -> Scenes:
    """Scenes ``[stream, seed, i]`` for i in indices, 1..max_objects random shapes each, with their targets."""
    gh = gw = image_size // patch_size
    n = len(indices)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.zeros((n, len(SHAPE_CLASSES)), dtype=np.float32)
    fraction = np.empty((n, gh * gw), dtype=np.float32)
    class_fraction = np.zeros((n, gh * gw, len(SHAPE_CLASSES)), dtype=np.float16)
    class_index = {name: c for c, name in enumerate(SHAPE_CLASSES)}
    for row, index in enumerate(indices):
        rng = np.random.default_rng([stream, seed, int(index)])
        image, objects = render_scene(rng, image_size, int(rng.integers(1, max_objects + 1)))
        images[row] = np.asarray(image, dtype=np.uint8)
        union = np.zeros((image_size, image_size), dtype=bool)
        for obj in objects:
            c = class_index[obj["shape"]]
            labels[row, c] = 1.0
            union |= obj["mask"]
            class_fraction[row, :, c] += _cell_fraction(obj["mask"], gh, gw, patch_size)
        fraction[row] = _cell_fraction(union, gh, gw, patch_size)
    return Scenes(images, labels, fraction, class_fraction, (gh, gw))


def _cell_fraction(mask: np.ndarray, gh: int, gw: int, patch_size: int) -> np.ndarray:
    """Fraction of each grid cell's pixels set in a bool mask, float32 [gh * gw] in row-major order."""
    cells = mask[: gh * patch_size, : gw * patch_size].reshape(gh, patch_size, gw, patch_size)
    return cells.mean(axis=(1, 3), dtype=np.float32).reshape(-1)


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images [N, H, W, 3] as a float tensor [N, 3, H, W] normalised with (mean, std)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(tuple(mean), dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def governor_quality(
    scorer: PatchScorer,
    head: ClassHead,
    num_images: int = 200,
    seed: int = 0,
    keep_ratio: float = 0.5,
    threshold: float = 0.7,
    max_classes: int = 3,
    batch_size: int = 100,
    stream: int = EVAL_STREAM,
    object_threshold: float = OBJECT_PATCH_THRESHOLD,
) -> dict[str, float]:
    """Patch coverage of top-k vs random selection and class-evidence precision / recall (see module docs).

    Scenes are rendered at the governor's image size with its patch size as the grid cell; the head's
    class names must be (a subset of) ``SHAPE_CLASSES`` for the evidence figures to mean anything.
    """
    scorer.eval()
    image_size, patch_size = scorer.image_size[0], scorer.patch_size[0]
    generator = torch.Generator().manual_seed(seed)
    kept_top = kept_random = object_patches = 0
    emitted = correct = present = 0
    for start in range(0, num_images, batch_size):
        indices = range(start, min(start + batch_size, num_images))
        scenes = render_scenes(indices, stream, seed, image_size, patch_size)
        out = scorer(to_tensor(scenes.images, scorer.mean, scorer.std))
        is_object = torch.from_numpy(scenes.patch_fraction >= object_threshold)
        batch, num_patches = is_object.shape
        if out.scores.shape != is_object.shape:
            raise ValueError(f"scores {tuple(out.scores.shape)} do not match the grid {scenes.grid} of the scenes")
        k = keep_count(num_patches, keep_ratio)
        top = select_topk(out.scores, k)
        rand = select_random(batch, num_patches, k, generator)
        kept_top += int(is_object.gather(1, top).sum())
        kept_random += int(is_object.gather(1, rand).sum())
        object_patches += int(is_object.sum())

        evidence = class_evidence(head(out.cls), head.classnames, threshold, max_classes)
        for names, label_row in zip(evidence, scenes.labels):
            truth = {SHAPE_CLASSES[c] for c in np.flatnonzero(label_row)}
            emitted += len(names)
            correct += sum(name in truth for name, _ in names)
            present += len(truth)
    return {
        "num_images": num_images,
        "keep_ratio": keep_ratio,
        "object_patches": object_patches,
        "coverage_topk": kept_top / max(object_patches, 1),
        "coverage_random": kept_random / max(object_patches, 1),
        "evidence_threshold": threshold,
        "evidence_classes": emitted,
        "evidence_precision": correct / emitted if emitted else float("nan"),
        "evidence_recall": correct / max(present, 1),
    }
