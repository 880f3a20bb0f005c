"""Shape geometry: the twelve shape classes as unit polygons, placed by rotation/scale/translation and rasterised."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "diamond",
    "heart",
    "hexagon",
    "pentagon",
    "ring",
    "square",
    "star",
    "triangle",
)

# Max rotation (degrees) per shape; small where rotation would change the class look.
MAX_ROTATION: dict[str, float] = {
    "square": 12.0,
    "diamond": 15.0,
    "cross": 20.0,
    "heart": 20.0,
}



def regular_polygon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon centred at the origin."""
    angles = [phase + 2 * math.pi * k / n for k in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def shape_parts(shape: str) -> list[tuple[list[tuple[float, float]], int]]:
    """Unit-radius polygons for a shape as (points, fill) pairs; fill 0 cuts holes."""
    if shape == "circle":
        return [(regular_polygon(48), 255)]
    if shape == "square":
        return [(regular_polygon(4, phase=math.pi / 4), 255)]
    if shape == "triangle":
        return [([(x, y + 0.2) for x, y in regular_polygon(3, 1.1)], 255)]
    if shape == "pentagon":
        return [(regular_polygon(5), 255)]
    if shape == "hexagon":
        return [(regular_polygon(6, phase=0.0), 255)]
    if shape == "diamond":
        return [([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)], 255)]
    if shape == "star":
        pts = [(r * math.cos(-math.pi / 2 + math.pi * k / 5), r * math.sin(-math.pi / 2 + math.pi * k / 5))
               for k, r in zip(range(10), [1.0, 0.42] * 5)]
        return [(pts, 255)]
    if shape == "cross":
        w = 0.32
        arm = [(-w, -1.0), (w, -1.0), (w, -w)]
        pts = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in arm]
        return [(pts, 255)]
    if shape == "ring":
        return [(regular_polygon(48), 255), (regular_polygon(48, 0.55), 0)]
    if shape == "crescent":
        inner = [(x + 0.45, y - 0.2) for x, y in regular_polygon(48, 0.85)]
        return [(regular_polygon(48), 255), (inner, 0)]
    if shape == "heart":
        ts = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        xs = 16 * np.sin(ts) ** 3
        ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) - 2.5
        return [(list(zip((xs / 16.5).tolist(), (ys / 16.5).tolist())), 255)]
    if shape == "arrow":
        pts = [(-1, -0.2), (0.15, -0.2), (0.15, -0.55), (1, 0), (0.15, 0.55), (0.15, 0.2), (-1, 0.2)]
        return [([(float(x), float(y)) for x, y in pts], 255)]
    raise ValueError(f"unknown shape {shape!r}")


def transform_points(
    points: Sequence[tuple[float, float]], angle: float, scale: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    """Rotate, scale and translate unit polygon points."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (c * x - s * y), cy + scale * (s * x + c * y)) for x, y in points]


def extent(shape: str, angle: float) -> tuple[float, float, float, float]:
    """Bounding box (xmin, ymin, xmax, ymax) of a rotated unit shape."""
    pts = np.array(transform_points(shape_parts(shape)[0][0], angle, 1.0, 0.0, 0.0))
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


@lru_cache(maxsize=None)
def unit_area(shape: str) -> float:
    """Area of a unit-radius shape, measured by rasterisation."""
    res, half = 512, 1.25
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in shape_parts(shape):
        draw.polygon(transform_points(pts, 0.0, res / (2 * half), res / 2, res / 2), fill=fill)
    return float((np.asarray(img) > 127).mean() * (2 * half) ** 2)


def rasterize(shape: str, angle: float, scale: float, cx: float, cy: float, size: int, ss: int) -> np.ndarray:
    """Anti-aliased alpha (float32 in [0, 1], size x size) of one shape drawn at ss-times supersampling."""
    img = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in shape_parts(shape):
        draw.polygon(transform_points(pts, angle, scale * ss, cx * ss, cy * ss), fill=fill)
    if ss > 1:
        img = img.reduce(ss)
    return np.asarray(img, dtype=np.float32) / 255.0

