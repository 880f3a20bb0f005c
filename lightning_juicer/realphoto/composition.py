"""Composites: a crop of a real photograph with Fashion-MNIST items pasted on it, and their ground-truth masks.

* **Context**: a square crop of 35-90 % of the photograph's shorter side at a random place, mirrored
  half of the time, resized to ``image_size`` (bicubic; photographs larger than needed are shrunk
  once beforehand, so that the smallest crop is ``image_size``). The crop box is in the shrunk
  photograph's pixels.
* **Item cut-out**: Fashion-MNIST items are photographed on black; the item is its non-black pixels
  (grey value > ``ITEM_THRESHOLD``) with interior holes filled, upscaled with the image (bilinear).
  Half of the items get a colour tint (a multiplicative RGB gain), as clothes are rarely grey.
* **Pasting**: the item's side is ``item_scale`` of the image (smaller when two items share it), its
  place uniform inside the image; a second item tries a few places and keeps the least overlapping.
  The pasted alpha is the upscaled cut-out; an item's **mask** is its pixels with alpha >= 0.5 not
  covered by a later item, so masks of one image are disjoint and match what is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from lightning_juicer.realphoto.sources import load_photo

ITEM_THRESHOLD = 12
_PLACEMENT_TRIES = 12


@dataclass(frozen=True)
class Item:
    """One Fashion-MNIST item: its split, index and class label (0..9)."""

    split: str
    index: int
    label: int


@dataclass
class Placed:
    """A pasted item: the item, its visible mask (bool [S, S]), box [x0, y0, x1, y1] (exclusive) and tint."""

    item: Item
    mask: np.ndarray
    box: list[int]
    tint: list[float]


def item_alpha(pixels: np.ndarray) -> np.ndarray:
    """Cut-out of a 28 x 28 item: float32 in {0, 1}, its non-black pixels with interior holes filled."""
    return ndimage.binary_fill_holes(pixels > ITEM_THRESHOLD).astype(np.float32)


@lru_cache(maxsize=None)
def _photo_image(photo: str, image_size: int, min_crop: float) -> Image.Image:
    """The photograph, shrunk once (Lanczos) so that its smallest crop is about image_size: crops never upscale."""
    image = Image.fromarray(load_photo(photo))
    factor = image_size / (min_crop * min(image.size))
    if factor < 1.0:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    return image


def photo_crop(rng: np.random.Generator, photo: str, image_size: int,
               crop_range: tuple[float, float] = (0.35, 0.9)) -> tuple[Image.Image, list[int]]:
    """A random square crop of a photograph, resized to image_size; returns (RGB image, [x0, y0, x1, y1])."""
    source = _photo_image(photo, image_size, crop_range[0])
    w, h = source.size
    side = max(8, int(round(rng.uniform(*crop_range) * min(h, w))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    crop = source.resize((image_size, image_size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop, [x0, y0, x0 + side, y0 + side]


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A multiplicative RGB gain: grey half of the time, else a random colour cast."""
    if rng.random() < 0.5:
        return np.ones(3, dtype=np.float32)
    gain = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    return gain / gain.max()


def _box(mask: np.ndarray) -> list[int]:
    """Tight box [x0, y0, x1, y1] of a mask (x1/y1 exclusive); zeros when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def paste_items(rng: np.random.Generator, background: Image.Image, items: list[tuple[Item, np.ndarray]],
                item_scale: tuple[float, float]) -> tuple[Image.Image, list[Placed]]:
    """Paste (item, 28 x 28 pixels) pairs onto a square RGB background; returns the image and the placed items."""
    size = background.width
    canvas = np.asarray(background, dtype=np.float32).copy()
    shrink = 1.0 if len(items) == 1 else 0.8
    occupied = np.zeros((size, size), dtype=bool)
    full_masks: list[np.ndarray] = []
    tints: list[np.ndarray] = []
    for _, pixels in items:
        side = max(8, int(round(rng.uniform(*item_scale) * shrink * size)))
        side = min(side, size)
        alpha = np.asarray(Image.fromarray(item_alpha(pixels), mode="F").resize((side, side), Image.BILINEAR))
        grey = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BICUBIC), dtype=np.float32)
        best: tuple[float, int, int] | None = None
        for _ in range(_PLACEMENT_TRIES if full_masks else 1):
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            region = occupied[y:y + side, x:x + side]
            overlap = float((region & (alpha >= 0.5)).sum()) / max(float((alpha >= 0.5).sum()), 1.0)
            if best is None or overlap < best[0]:
                best = (overlap, x, y)
            if overlap <= 0.05:
                break
        assert best is not None
        _, x, y = best
        tint = _tint(rng)
        a = alpha[..., None]
        colour = grey[..., None] * tint[None, None]
        canvas[y:y + side, x:x + side] = canvas[y:y + side, x:x + side] * (1 - a) + colour * a
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + side, x:x + side] = alpha >= 0.5
        occupied |= mask
        full_masks.append(mask)
        tints.append(tint)
    placed = []
    for i, ((item, _), mask, tint) in enumerate(zip(items, full_masks, tints)):
        visible = mask.copy()
        for later in full_masks[i + 1:]:
            visible &= ~later
        placed.append(Placed(item, visible, _box(visible), [round(float(t), 4) for t in tint]))
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    return image, placed


def object_fraction(placed: list[Placed]) -> float:
    """Fraction of the image covered by the union of the items' visible masks."""
    if not placed:
        return 0.0
    union = np.zeros_like(placed[0].mask)
    for p in placed:
        union |= p.mask
    return float(union.mean())
