"""Per-sample decoding and batch collation for the training stream (runs inside DataLoader workers)."""

from __future__ import annotations

import io
from typing import Callable

import torch
from PIL import Image

from lightning_juicer.data.drops import DropCounter
from lightning_juicer.governor.selection import select_patches

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt",)


def load_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to RGB; transparent images are composited on white, grayscale is expanded."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class SampleDecoder:
    """Raw webdataset sample -> ``{key, image, caption}``, or None for a counted drop."""

    def __init__(self, transform: Callable, drops: DropCounter) -> None:
        self.transform = transform
        self.drops = drops

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
        return {"key": key, "image": self.transform(image), "caption": caption}


class BatchCollator:
    """List of decoded samples -> the batch contract ``{image, keep, text, key}``."""

    def __init__(self, tokenizer: Callable, selection: str, keep_ratio: float, num_patches: int) -> None:
        self.tokenizer = tokenizer
        self.selection = selection
        self.keep_ratio = keep_ratio
        self.num_patches = num_patches

    def __call__(self, samples: list[dict]) -> dict:
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "keep": select_patches(self.selection, len(samples), self.num_patches, self.keep_ratio),
            "text": self.tokenizer([s["caption"] for s in samples]),
            "key": [s["key"] for s in samples],
        }
