"""Seeded synthetic image-caption dataset that stands in for noisy web data (CC3M-like).

Scenes are 1-3 saturated shapes on cluttered, muted backgrounds. Training and validation
data are written as webdataset shards in img2dataset layout with noisy web-style captions;
evaluation sets are a zero-shot ImageFolder (one object per image) and a Karpathy-style
retrieval split with five clean captions per image.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightning_juicer.io.writers import decode_mask, encode_mask  # noqa: F401 - the masks' encoding, re-exported
from lightning_juicer.io.writers import jpeg_bytes, shard_pattern, write_json
from lightning_juicer.io.writers import write_shards as write_shards_of
from lightning_juicer.errors import ConfigError

FORMAT_VERSION = 1
MARKER = "dataset.json"
SPLIT_IDS = {"train": 0, "val": 1, "zeroshot": 2, "retrieval": 3}

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
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "gradient": ("gradient", "smooth", "plain"),
    "stripes": ("striped", "stripy"),
    "checker": ("checkered", "tiled"),
    "noise": ("textured", "mottled", "blotchy"),
}

# Max rotation (degrees) per shape; small where rotation would change the class look.
_MAX_ROTATION: dict[str, float] = {
    "square": 12.0,
    "diamond": 15.0,
    "cross": 20.0,
    "heart": 20.0,
}

_TEMPLATES: tuple[str, ...] = (
    "{objs}",
    "a photo of {objs}",
    "photo of {objs}",
    "an image of {objs}",
    "a picture of {objs}",
    "a drawing of {objs}",
    "there is {objs}",
    "{objs} in the picture",
    "a close-up of {objs}",
)
_BG_TEMPLATES: tuple[str, ...] = (
    "{objs} on a {bg} background",
    "a photo of {objs} on a {bg} background",
    "photo of {objs} against a {bg} backdrop",
    "an image of {objs} over a {bg} background",
)
_PAIR_JOINERS: tuple[str, ...] = (" and ", " next to ", " with ", " beside ")
_TRIPLE_JOINERS: tuple[tuple[str, str], ...] = ((", ", " and "), (", ", ", and "), (" and ", " and "))
_CONNECTOR = r"(?:, and |, | and | next to | with | beside )"
_SIZE_WORDS = ("small", "tiny", "large", "big")

NOISE_TYPES: tuple[str, ...] = ("unmentioned", "wrong_color", "misspelling", "repeat", "junk")
_JUNK_FIXED: tuple[str, ...] = ("click here", "stock photo", "free download", "#sale", "best price", "#new")


@dataclass
class SyntheticConfig:
    root: str = "data/synthetic"
    seed: int = 0
    image_size: int = 64
    num_train: int = 2000
    samples_per_shard: int = 500
    num_val: int = 256
    eval_per_class: int = 20
    num_retrieval: int = 100
    noise_rate: float = 0.3
    max_objects: int = 3
    jpeg_quality: int = 90


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    train_shards: str
    val_shards: str
    zeroshot_dir: Path
    classnames_file: Path
    retrieval_images: Path
    retrieval_json: Path


# ----------------------------------------------------------------------------- shapes


def _regular_polygon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon centred at the origin."""
    angles = [phase + 2 * math.pi * k / n for k in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _shape_parts(shape: str) -> list[tuple[list[tuple[float, float]], int]]:
    """Unit-radius polygons for a shape as (points, fill) pairs; fill 0 cuts holes."""
    if shape == "circle":
        return [(_regular_polygon(48), 255)]
    if shape == "square":
        return [(_regular_polygon(4, phase=math.pi / 4), 255)]
    if shape == "triangle":
        return [([(x, y + 0.2) for x, y in _regular_polygon(3, 1.1)], 255)]
    if shape == "pentagon":
        return [(_regular_polygon(5), 255)]
    if shape == "hexagon":
        return [(_regular_polygon(6, phase=0.0), 255)]
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
        return [(_regular_polygon(48), 255), (_regular_polygon(48, 0.55), 0)]
    if shape == "crescent":
        inner = [(x + 0.45, y - 0.2) for x, y in _regular_polygon(48, 0.85)]
        return [(_regular_polygon(48), 255), (inner, 0)]
    if shape == "heart":
        ts = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        xs = 16 * np.sin(ts) ** 3
        ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) - 2.5
        return [(list(zip((xs / 16.5).tolist(), (ys / 16.5).tolist())), 255)]
    if shape == "arrow":
        pts = [(-1, -0.2), (0.15, -0.2), (0.15, -0.55), (1, 0), (0.15, 0.55), (0.15, 0.2), (-1, 0.2)]
        return [([(float(x), float(y)) for x, y in pts], 255)]
    raise ValueError(f"unknown shape {shape!r}")


def _transform(
    points: Sequence[tuple[float, float]], angle: float, scale: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    """Rotate, scale and translate unit polygon points."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (c * x - s * y), cy + scale * (s * x + c * y)) for x, y in points]


def _extent(shape: str, angle: float) -> tuple[float, float, float, float]:
    """Bounding box (xmin, ymin, xmax, ymax) of a rotated unit shape."""
    pts = np.array(_transform(_shape_parts(shape)[0][0], angle, 1.0, 0.0, 0.0))
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


@lru_cache(maxsize=None)
def _unit_area(shape: str) -> float:
    """Area of a unit-radius shape, measured by rasterisation."""
    res, half = 512, 1.25
    img = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in _shape_parts(shape):
        draw.polygon(_transform(pts, 0.0, res / (2 * half), res / 2, res / 2), fill=fill)
    return float((np.asarray(img) > 127).mean() * (2 * half) ** 2)


def _rasterize(shape: str, angle: float, scale: float, cx: float, cy: float, size: int, ss: int) -> np.ndarray:
    """Anti-aliased alpha (float32 in [0, 1], size x size) of one shape drawn at ss-times supersampling."""
    img = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(img)
    for pts, fill in _shape_parts(shape):
        draw.polygon(_transform(pts, angle, scale * ss, cx * ss, cy * ss), fill=fill)
    if ss > 1:
        img = img.reduce(ss)
    return np.asarray(img, dtype=np.float32) / 255.0


# ------------------------------------------------------------------------- backgrounds


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
    max_rot = math.radians(_MAX_ROTATION.get(shape, 180.0))
    scale = math.sqrt(area / _unit_area(shape))
    best: dict[str, Any] | None = None
    for attempt in range(16):
        angle = rng.uniform(-max_rot, max_rot)
        x0, y0, x1, y1 = _extent(shape, angle)
        fit = (size - 2.5) / max(x1 - x0, y1 - y0)
        s = min(scale * (0.85 ** (attempt // 6)), fit)
        cx = rng.uniform(1.0 - s * x0, max(1.0 - s * x0, size - 1.0 - s * x1))
        cy = rng.uniform(1.0 - s * y0, max(1.0 - s * y0, size - 1.0 - s * y1))
        alpha = _rasterize(shape, angle, s, cx, cy, size, ss)
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


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    """Indefinite article for a word."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _object_phrase(obj: dict, rng: np.random.Generator) -> str:
    """'a [size] colour shape' for one object."""
    words = [obj["color"], obj["shape"]]
    if rng.random() < 0.2:
        frac = float(np.asarray(obj["mask"]).mean()) if "mask" in obj else 0.1
        if frac < 0.06:
            words.insert(0, "small" if rng.random() < 0.7 else "tiny")
        elif frac > 0.15:
            words.insert(0, "large" if rng.random() < 0.6 else "big")
    return " ".join([_article(words[0])] + words)


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    """Join object phrases into natural English."""
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + _PAIR_JOINERS[int(rng.integers(len(_PAIR_JOINERS)))] + phrases[1]
    first, last = _TRIPLE_JOINERS[int(rng.integers(len(_TRIPLE_JOINERS)))]
    return first.join(phrases[:-1]) + last + phrases[-1]


def clean_caption(objects: Sequence[dict], rng: np.random.Generator, background: str | None = None) -> str:
    """Natural short caption mentioning every object's colour and shape (background sometimes)."""
    order = rng.permutation(len(objects))
    objs = _join([_object_phrase(objects[i], rng) for i in order], rng)
    if background in BACKGROUND_WORDS and rng.random() < 0.3:
        words = BACKGROUND_WORDS[background]
        bg = words[int(rng.integers(len(words)))]
        text = _BG_TEMPLATES[int(rng.integers(len(_BG_TEMPLATES)))].format(objs=objs, bg=bg)
    else:
        text = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(objs=objs)
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.25:
        text += "."
    return text


def _phrase_pattern(obj: dict) -> re.Pattern:
    """Regex matching an object's phrase: article, optional size word, colour, shape."""
    sizes = "|".join(_SIZE_WORDS)
    color, shape = re.escape(obj["color"]), re.escape(obj["shape"])
    return re.compile(rf"\b(?P<art>an?) (?P<size>(?:{sizes}) )?(?P<color>{color}) (?P<shape>{shape})\b", re.IGNORECASE)


def _drop_object(caption: str, obj: dict) -> str | None:
    """Remove one object's phrase (with its connector) from a caption; None if not found."""
    phrase = _phrase_pattern(obj).pattern
    for pat in (_CONNECTOR + phrase, phrase + _CONNECTOR):
        m = re.search(pat, caption, re.IGNORECASE)
        if m:
            out = caption[: m.start()] + caption[m.end():]
            if m.start() == 0 and caption[:1].isupper():
                out = out[:1].upper() + out[1:]
            return out
    return None


def _recolor(caption: str, obj: dict, new_color: str) -> str | None:
    """Replace one object's colour word by another colour; None if the phrase is not found."""
    m = _phrase_pattern(obj).search(caption)
    if m is None:
        return None
    nxt = m.group("size") or new_color
    art = _article(nxt)
    if m.group("art")[0].isupper():
        art = art.capitalize()
    new = f"{art} {m.group('size') or ''}{new_color} {m.group('shape')}"
    return caption[: m.start()] + new + caption[m.end():]


def _typo(word: str, rng: np.random.Generator) -> str:
    """Swap, drop or duplicate a letter so that the word always changes."""
    op = int(rng.integers(3))
    if op == 0:
        swaps = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if swaps:
            i = swaps[int(rng.integers(len(swaps)))]
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = int(rng.integers(len(word)))
    if op == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _misspell(caption: str, objects: Sequence[dict], rng: np.random.Generator) -> str:
    """Introduce typos into 1-2 words, preferring shape/colour words half of the time."""
    spans = [m.span() for m in re.finditer(r"[A-Za-z]{3,}", caption)]
    if not spans:
        return caption
    keywords = {o["shape"] for o in objects} | {o["color"] for o in objects} | set(COLORS)
    preferred = [s for s in spans if caption[s[0]:s[1]].lower() in keywords]
    pool = preferred if preferred and rng.random() < 0.5 else spans
    n = min(len(pool), int(rng.integers(1, 3)))
    chosen = sorted((pool[i] for i in rng.choice(len(pool), size=n, replace=False)), reverse=True)
    for a, b in chosen:
        caption = caption[:a] + _typo(caption[a:b], rng) + caption[b:]
    return caption


def _repeat(caption: str, rng: np.random.Generator) -> str:
    """Repeat one or two words ('a a red red star')."""
    words = caption.split(" ")
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(len(words)))
        words.insert(i, words[i])
    return " ".join(words)


def _junk_token(rng: np.random.Generator) -> str:
    """A junk web token: file name, URL or spam phrase."""
    n = int(rng.integers(100000))
    kind = int(rng.integers(4))
    if kind == 0:
        return f"IMG_{1000 + n % 9000}.JPG"
    if kind == 1:
        return f"DSC{n:05d}.jpg"
    if kind == 2:
        return f"http://www.example-shop.com/p/{n}"
    return _JUNK_FIXED[int(rng.integers(len(_JUNK_FIXED)))]


def add_caption_noise(
    caption: str, objects: Sequence[dict], rng: np.random.Generator, noise_rate: float
) -> tuple[str, list[str]]:
    """Apply each web-noise type independently with probability noise_rate; returns (caption, applied types)."""
    applied: list[str] = []
    mentioned = list(objects)
    draws = {name: rng.random() < noise_rate for name in NOISE_TYPES}
    if draws["unmentioned"] and len(mentioned) >= 2:
        i = int(rng.integers(len(mentioned)))
        out = _drop_object(caption, mentioned[i])
        if out is not None:
            caption = out
            mentioned.pop(i)
            applied.append("unmentioned")
    if draws["wrong_color"] and mentioned:
        obj = mentioned[int(rng.integers(len(mentioned)))]
        others = [c for c in COLORS if c != obj["color"]]
        out = _recolor(caption, obj, others[int(rng.integers(len(others)))])
        if out is not None:
            caption = out
            applied.append("wrong_color")
    if draws["misspelling"]:
        out = _misspell(caption, mentioned, rng)
        if out != caption:
            caption = out
            applied.append("misspelling")
    if draws["repeat"]:
        caption = _repeat(caption, rng)
        applied.append("repeat")
    if draws["junk"]:
        token = _junk_token(rng)
        caption = f"{token} {caption}" if rng.random() < 0.5 else f"{caption} {token}"
        applied.append("junk")
    return caption, applied


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens as in the Karpathy splits."""
    return re.findall(r"[a-z0-9]+", text.lower())


# ---------------------------------------------------------------------------- samples


def _sample_rng(seed: int, split: str, *index: int) -> np.random.Generator:
    """Per-sample generator derived from (seed, split, index)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], *index])


def make_web_sample(cfg: SyntheticConfig, split: str, index: int, key: str) -> dict[str, bytes]:
    """One webdataset sample ({ext: bytes}) with a noisy caption and metadata."""
    rng = _sample_rng(cfg.seed, split, index)
    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    image, objects = render_scene(rng, cfg.image_size, num_objects)
    clean = clean_caption(objects, rng, image.info.get("background"))
    noisy, noise = add_caption_noise(clean, objects, rng, cfg.noise_rate)
    meta = {
        "key": key,
        "caption": noisy,
        "clean_caption": clean,
        "noise": noise,
        "width": image.width,
        "height": image.height,
        "background": image.info.get("background"),
        "objects": [{**{k: o[k] for k in ("shape", "color", "box")}, "mask": encode_mask(o["mask"])} for o in objects],
        "object_fraction": object_fraction(objects),
    }
    return {
        "jpg": jpeg_bytes(image, cfg.jpeg_quality),
        "txt": noisy.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
    }


def write_shards(cfg: SyntheticConfig, split: str, count: int, out_dir: Path) -> int:
    """Write img2dataset-style shards, sizes.json and *_stats.json; returns the shard count."""
    return write_shards_of(out_dir, count, cfg.samples_per_shard,
                           lambda index, key: make_web_sample(cfg, split, index, key))


def write_zeroshot(cfg: SyntheticConfig, out_dir: Path) -> int:
    """ImageFolder of single-object images, one folder per class, plus classnames.txt."""
    classes = sorted(SHAPE_CLASSES)
    out_dir.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        cls_dir = out_dir / name
        cls_dir.mkdir(exist_ok=True)
        for i in range(cfg.eval_per_class):
            rng = _sample_rng(cfg.seed, "zeroshot", c, i)
            image, _ = render_scene(rng, cfg.image_size, 1, shapes=[name])
            (cls_dir / f"{name}_{i:04d}.jpg").write_bytes(jpeg_bytes(image, cfg.jpeg_quality))
    (out_dir / "classnames.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return len(classes) * cfg.eval_per_class


def _distinct_captions(
    objects: Sequence[dict], rng: np.random.Generator, background: str | None, n: int = 5
) -> list[str]:
    """n clean captions, distinct where possible."""
    caps: list[str] = []
    for _ in range(20 * n):
        cap = clean_caption(objects, rng, background)
        if cap not in caps:
            caps.append(cap)
        if len(caps) == n:
            return caps
    while len(caps) < n:
        caps.append(clean_caption(objects, rng, background))
    return caps


def write_retrieval(cfg: SyntheticConfig, out_dir: Path) -> int:
    """Retrieval images plus karpathy_test.json with 5 clean captions per image."""
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(cfg.num_retrieval):
        rng = _sample_rng(cfg.seed, "retrieval", i)
        image, objects = render_scene(rng, cfg.image_size, int(rng.integers(1, cfg.max_objects + 1)))
        filename = f"{i:05d}.jpg"
        (img_dir / filename).write_bytes(jpeg_bytes(image, cfg.jpeg_quality))
        caps = _distinct_captions(objects, rng, image.info.get("background"))
        sentids = [i * 5 + j for j in range(5)]
        sentences = [{"raw": c, "tokens": _tokens(c), "imgid": i, "sentid": s} for c, s in zip(caps, sentids)]
        images.append({"filepath": "images", "filename": filename, "imgid": i, "split": "test",
                       "sentids": sentids, "sentences": sentences})
    write_json(out_dir / "karpathy_test.json", {"dataset": "synthetic", "images": images})
    return cfg.num_retrieval


# ------------------------------------------------------------------------------ driver


def is_generated(root: str | Path) -> bool:
    """True iff root holds a completed dataset (the dataset.json marker exists)."""
    return (Path(root) / MARKER).is_file()


def synthetic_paths(root: str | Path) -> SyntheticPaths:
    """Paths of a generated dataset (shard counts are read from the marker)."""
    root = Path(root).resolve()
    if not is_generated(root):
        raise FileNotFoundError(f"no synthetic dataset at {root} (missing {MARKER}); run prepare_synthetic first")
    counts = json.loads((root / MARKER).read_text(encoding="utf-8"))["counts"]
    zeroshot = root / "eval" / "zeroshot"
    retrieval = root / "eval" / "retrieval"
    return SyntheticPaths(
        root=root,
        train_shards=shard_pattern(root / "train", counts["train_shards"]),
        val_shards=shard_pattern(root / "val", counts["val_shards"]),
        zeroshot_dir=zeroshot,
        classnames_file=zeroshot / "classnames.txt",
        retrieval_images=retrieval / "images",
        retrieval_json=retrieval / "karpathy_test.json",
    )


def _generate(cfg: SyntheticConfig, out: Path) -> None:
    """Generate every split into out, writing the marker last."""
    counts = {
        "train": cfg.num_train,
        "val": cfg.num_val,
        "train_shards": write_shards(cfg, "train", cfg.num_train, out / "train"),
        "val_shards": write_shards(cfg, "val", cfg.num_val, out / "val"),
        "zeroshot": write_zeroshot(cfg, out / "eval" / "zeroshot"),
        "retrieval": write_retrieval(cfg, out / "eval" / "retrieval"),
    }
    marker = {
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "counts": counts,
        "shape_classes": list(SHAPE_CLASSES),
        "colors": {k: list(v) for k, v in COLORS.items()},
        "background_kinds": list(BACKGROUND_KINDS),
        "noise_types": list(NOISE_TYPES),
    }
    write_json(out / MARKER, marker)


def prepare_synthetic(cfg: SyntheticConfig) -> SyntheticPaths:
    """Generate the dataset at cfg.root if it is missing or empty; never regenerate a completed one."""
    root = Path(cfg.root).resolve()
    if is_generated(root):
        return synthetic_paths(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(
            f"{root} is not empty but has no {MARKER} (incomplete or foreign data); "
            f"delete it or point data.init_args.synthetic.root elsewhere"
        )
    if cfg.num_train < 1 or cfg.num_val < 1 or cfg.max_objects < 1:
        raise ConfigError("data.init_args.synthetic: num_train, num_val and max_objects must be >= 1")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _generate(cfg, tmp)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_generated(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return synthetic_paths(root)
