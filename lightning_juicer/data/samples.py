"""Per-sample decoding and batch collation for the training stream (runs inside DataLoader workers)."""

from __future__ import annotations

import io
import random
from typing import Callable

import numpy as np
import torch
from PIL import Image

from lightning_juicer.data.drops import DropCounter
from lightning_juicer.governor.selection import SCORE_STRATEGIES, resample_scores, select_from_scores, select_patches

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt",)
CAPTION_SOURCES = ("original", "juiced", "mix")


# Single-channel modes of more than 8 bits: 16-bit PNG/TIFF (I;16*), 32-bit integer (I) and float (F).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grayscale image as 8-bit ``L``, its value range stretched to 0..255.

    PIL's own ``convert`` clips these modes at 255, so a 16-bit photograph becomes a white image.
    Values are stretched from the image's finite minimum to its maximum (a 12-bit scan stored in 16
    bits is not left dark); a constant image keeps its level on the mode's scale (16-bit / 257,
    float in [0, 1] x 255, else clipped). An image with no finite pixel is refused (ValueError, a
    counted ``corrupt_image``).
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError(f"{image.mode} image has no finite pixel value")
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi > lo:
        scaled = (np.where(finite, values, lo) - lo) * (255.0 / (hi - lo))
    elif image.mode.startswith("I;16") or (image.mode == "I" and hi > 255):
        scaled = np.full(values.shape, lo / 257.0)
    elif image.mode == "F" and 0.0 <= lo <= 1.0:
        scaled = np.full(values.shape, lo * 255.0)
    else:
        scaled = np.full(values.shape, lo)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def load_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to RGB; transparent images are composited on white, grayscale is expanded,
    16-bit / 32-bit / float grayscale is scaled to 8 bits by its value range (``to_8bit``)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode in WIDE_MODES:
        return to_8bit(image).convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class SampleDecoder:
    """Raw webdataset sample -> ``{key, image, caption[, scores]}``, or None for a counted drop.

    With ``missing_scores`` set, samples carry their sidecar scores; a sample without a sidecar
    entry is dropped (``"skip"``) or kept for random selection (``"random"``), counted either way.
    ``captions`` picks the caption trained on: the shard's ``original``, the text pass's ``juiced``
    one, or the juiced one with probability ``juiced_prob`` (``mix``); a sample without a juiced
    caption uses its original, counted.
    """

    def __init__(
        self,
        transform: Callable,
        drops: DropCounter,
        missing_scores: str | None = None,
        captions: str = "original",
        juiced_prob: float = 1.0,
    ) -> None:
        self.transform = transform
        self.drops = drops
        self.missing_scores = missing_scores
        self.captions = captions
        self.juiced_prob = juiced_prob if captions == "mix" else 1.0

    def caption(self, original: str, sample: dict) -> str:
        """The caption to train on (DataLoader workers seed ``random`` per worker and epoch)."""
        if self.captions == "original" or (self.juiced_prob < 1.0 and random.random() >= self.juiced_prob):
            return original
        juiced = sample.get("__juiced__")
        if not juiced:
            self.drops.drop("original_for_missing_juiced", sample.get("__key__", "?"))
            return original
        return juiced

    def __call__(self, sample: dict) -> dict | None:
        key = sample.get("__key__", "?")
        image_bytes = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if image_bytes is None:
            self.drops.drop("no_image", key)
            return None
        caption_bytes = next((sample[ext] for ext in CAPTION_EXTS if ext in sample), None)
        if caption_bytes is None:
            self.drops.drop("no_caption", key)
            return None
        try:
            caption = caption_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as exn:
            self.drops.drop("bad_caption_encoding", key, str(exn))
            return None
        if not caption:
            self.drops.drop("no_caption", key, "empty caption")
            return None
        try:
            image = load_rgb(image_bytes)
        except Exception as exn:  # PIL raises many types for broken files
            self.drops.drop("corrupt_image", key, repr(exn))
            return None
        scores = sample.get("__scores__")
        if self.missing_scores is not None and scores is None:
            if self.missing_scores == "skip":
                self.drops.drop("no_sidecar_entry", key)
                return None
            self.drops.drop("random_for_missing_sidecar", key)
        decoded = {"key": key, "image": self.transform(image), "caption": self.caption(caption, sample)}
        if self.missing_scores is not None:
            decoded["scores"] = scores
        return decoded


class BatchCollator:
    """List of decoded samples -> the batch contract ``{image, keep, text, key}``.

    Score strategies (``topk``, ``stratified``) select from the samples' sidecar scores, resampled
    from the governor's grid onto the student's; samples without scores (or with non-finite ones)
    get random patches, counted.
    """

    def __init__(
        self,
        tokenizer: Callable,
        selection: str,
        keep_ratio: float,
        grid: tuple[int, int],
        drops: DropCounter | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.selection = selection
        self.keep_ratio = keep_ratio
        self.grid = tuple(grid)
        self.drops = drops

    def select(self, samples: list[dict]) -> torch.Tensor | None:
        """Kept patch indices for the batch (None = all)."""
        num_patches = self.grid[0] * self.grid[1]
        if self.selection not in SCORE_STRATEGIES:
            return select_patches(self.selection, len(samples), num_patches, self.keep_ratio)
        present = [s["scores"] for s in samples if s.get("scores") is not None]
        source_grid = present[0][1] if present else self.grid
        source = torch.full((len(samples), source_grid[0] * source_grid[1]), float("nan"))
        for i, sample in enumerate(samples):
            if sample.get("scores") is not None:
                source[i] = torch.from_numpy(sample["scores"][0].astype("float32"))
        scores = resample_scores(source, source_grid, self.grid)
        keep, fallbacks = select_from_scores(self.selection, scores, self.keep_ratio)
        nonfinite = fallbacks - (len(samples) - len(present))
        if nonfinite and self.drops is not None:
            self.drops.drop("nonfinite_scores", samples[0]["key"], f"{nonfinite} sample(s) in this batch", count=nonfinite)
        return keep

    def __call__(self, samples: list[dict]) -> dict:
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "keep": self.select(samples),
            "text": self.tokenizer([s["caption"] for s in samples]),
            "key": [s["key"] for s in samples],
        }
