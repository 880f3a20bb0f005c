"""Scenes: 1-3 saturated shapes on a cluttered, muted background, with each object's visible mask and box."""

from __future__ import annotations

import colorsys
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightning_juicer.synthetic.shapes import MAX_ROTATION, SHAPE_CLASSES, extent, rasterize, unit_area

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 20),
    "orange": (250, 135, 0),
    "purple": (140, 40, 190),
    "cyan": (0, 205, 225),
    "pink": (250, 110, 185),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

BACKGROUND_KINDS: tuple[str, ...] = ("gradient", "stripes", "checker", "noise")



def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A random low-saturation colour as float RGB in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.85))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """Cluttered but muted float32 background (size x size x 3)."""
    c1, c2 = _muted_color(rng), _muted_color(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == "stripes":
        period = rng.uniform(0.1, 0.25)
        t = (np.sin(2 * math.pi * proj / period) > 0).astype(np.float32) * rng.uniform(0.5, 1.0)
    elif kind == "checker":
        cells = int(rng.integers(4, 11))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32) * rng.uniform(0.5, 1.0)
    elif kind == "noise":
        grid = int(rng.integers(3, 9))
        low = Image.fromarray(rng.random((grid, grid), dtype=np.float32), mode="F")
        t = np.asarray(low.resize((size, size), Image.BILINEAR), dtype=np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return img + rng.normal(0.0, rng.uniform(2.0, 7.0), size=(size, size, 1)).astype(np.float32)


def _draw_distractors(rng: np.random.Generator, img: Image.Image) -> None:
    """Scatter tiny dots and short lines (clutter much smaller than any object)."""
    size = img.width
    unit = size / 64.0
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 11))):
        color = tuple(int(v) for v in _muted_color(rng))
        x, y = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            r = rng.uniform(0.6, 1.6) * unit
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            length, ang = rng.uniform(3, 7) * unit, rng.uniform(0, 2 * math.pi)
            end = (x + length * math.cos(ang), y + length * math.sin(ang))
            draw.line([x, y, *end], fill=color, width=max(1, round(unit)))


# ------------------------------------------------------------------------------ scenes


def _place(
    rng: np.random.Generator, shape: str, area: float, size: int, ss: int, occupied: np.ndarray
) -> dict[str, Any]:
    """Place one shape of roughly the given pixel area, avoiding heavy overlap with occupied pixels."""
    max_rot = math.radians(MAX_ROTATION.get(shape, 180.0))
    scale = math.sqrt(area / unit_area(shape))
    best: dict[str, Any] | None = None
    for attempt in range(16):
        angle = rng.uniform(-max_rot, max_rot)
        x0, y0, x1, y1 = extent(shape, angle)
        fit = (size - 2.5) / max(x1 - x0, y1 - y0)
        s = min(scale * (0.85 ** (attempt // 6)), fit)
        cx = rng.uniform(1.0 - s * x0, max(1.0 - s * x0, size - 1.0 - s * x1))
        cy = rng.uniform(1.0 - s * y0, max(1.0 - s * y0, size - 1.0 - s * y1))
        alpha = rasterize(shape, angle, s, cx, cy, size, ss)
        mask = alpha >= 0.5
        overlap = int((mask & occupied).sum()) / max(int(mask.sum()), 1)
        cand = {"alpha": alpha, "mask": mask, "overlap": overlap}
        if best is None or overlap < best["overlap"]:
            best = cand
        if overlap <= 0.08 and mask.any():
            break
    assert best is not None
    return best


def _box(mask: np.ndarray) -> list[int]:
    """Tight box [x0, y0, x1, y1] of a mask, x1/y1 exclusive."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def render_scene(
    rng: np.random.Generator,
    image_size: int,
    num_objects: int,
    shapes: Sequence[str] | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Render coloured shapes on a cluttered background; returns the RGB image and per-object dicts.

    Each object dict has ``shape``, ``color``, ``box`` ([x0, y0, x1, y1], x1/y1 exclusive) and ``mask``
    (bool HxW, the object's visible pixels). ``image.info["background"]`` holds the background kind.
    """
    size = image_size
    ss = 4 if size <= 128 else 2
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    bg = Image.fromarray(np.clip(_background(rng, size, kind), 0, 255).astype(np.uint8), mode="RGB")
    _draw_distractors(rng, bg)
    canvas = np.asarray(bg, dtype=np.float32).copy()

    names, order = list(COLORS), rng.permutation(len(COLORS))
    colors = [names[int(order[i % len(order)])] for i in range(num_objects)]
    if shapes is None:
        shapes = [SHAPE_CLASSES[int(k)] for k in rng.integers(len(SHAPE_CLASSES), size=num_objects)]
    pairs = list(zip(shapes, colors))

    total = rng.uniform(0.12, 0.30) * size * size
    weights = rng.uniform(0.5, 1.5, num_objects)
    areas = total * weights / weights.sum()

    occupied = np.zeros((size, size), dtype=bool)
    masks: list[np.ndarray] = []
    for (shape, color), area in zip(pairs, areas):
        placed = _place(rng, shape, float(area), size, ss, occupied)
        rgb = np.clip(np.array(COLORS[color], dtype=np.float32) + rng.uniform(-12, 12, 3), 0, 255)
        a = placed["alpha"][..., None]
        canvas = canvas * (1 - a) + rgb[None, None] * a
        occupied |= placed["mask"]
        masks.append(placed["mask"])

    objects = []
    for i, ((shape, color), mask) in enumerate(zip(pairs, masks)):
        visible = mask.copy()
        for later in masks[i + 1:]:
            visible &= ~later
        objects.append({"shape": shape, "color": color, "box": _box(visible), "mask": visible})
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    image.info["background"] = kind
    return image, objects


def object_fraction(objects: Sequence[dict]) -> float:
    """Fraction of image pixels covered by the union of object masks."""
    if not objects:
        return 0.0
    union = np.zeros_like(objects[0]["mask"], dtype=bool)
    for o in objects:
        union |= o["mask"]
    return float(union.mean())

