"""The one image decoder of the project: training loader, evaluation readers and the vision pass all call ``load_rgb``.

JPEGs much larger than the model's input are decoded at a reduced size (PIL's ``Image.draft``: libjpeg
scales by 1/2, 1/4 or 1/8 inside the inverse DCT, skipping most of the work) when the caller passes
``draft``, the smallest (width, height) the decoded image must still cover. ``draft_size`` reads it off
the resize step of the transform that follows (``DRAFT_MARGIN`` x its target). A 640 x 480 JPEG for a
224 px crop is then decoded at 320 x 240. The pixels after resize + crop differ from a full decode:
mean absolute difference 0.9 grey levels over scikit-image's photographs at 500-1,000 px (worst
4.2, PSNR >= 28 dB; a scanned text page 8.1), because the decoder's 2x/4x reduction averages blocks
where the antialiased resize would filter; tests/test_decode.py bounds it. A margin of 1.5 gives
0.15 (worst 1.7) but no reduction at all below ~670 px, where most web images are.

``gpu_decode`` picks torchvision's nvjpeg decoder (``torchvision.io.decode_jpeg`` on the device) for
the vision pass when a GPU is present: the DataLoader workers then hand over the bytes of every complete
JPEG (``complete_jpeg``) undecoded, and ``decode_on_device`` decodes a batch of them on the device
(nvjpeg, batched; one image that fails there is returned as None and decoded on the host instead).
The device path decodes at full size (no draft) and resizes on the device.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from lightning_juicer.errors import ConfigError

# Single-channel modes of more than 8 bits: 16-bit PNG/TIFF (I;16*), 32-bit integer (I) and float (F).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Decode to at least this multiple of the resize target (1 = fastest; larger = closer to a full decode, slower).
DRAFT_MARGIN = 1.0
GPU_DECODE_CHOICES = ("auto", "cpu", "gpu")


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


def load_rgb(source: bytes | str | Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes (or a file) to RGB; transparent images are composited on white, grayscale is
    expanded, 16-bit / 32-bit / float grayscale is scaled to 8 bits by its value range (``to_8bit``).

    ``draft`` (width, height): a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers
    it (see ``draft_size``); other formats ignore it.
    """
    image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
    if draft is not None and image.format == "JPEG":
        image.draft(image.mode, draft)
    image.load()
    if image.mode in WIDE_MODES:
        return to_8bit(image).convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _steps(transform: Callable) -> list:
    steps = getattr(transform, "transforms", None)
    return list(steps) if steps is not None else [transform]


def draft_size(transform: Callable, margin: float = DRAFT_MARGIN) -> tuple[int, int] | None:
    """The (width, height) a JPEG must still cover before ``transform``, or None (decode at full size).

    Known for a torchvision ``Resize`` (v1 or v2, first step or alone): an int size (shortest side, no
    ``max_size``) asks for a square of ``margin`` x that side, an (h, w) size for ``margin`` x (w, h).
    Any other first step (open_clip's ``ResizeKeepRatio`` for ``resize_mode: longest``, a random crop)
    gets None: the image is decoded in full, as before.
    """
    from torchvision.transforms import Resize
    from torchvision.transforms.v2 import Resize as ResizeV2

    steps = _steps(transform)
    first = steps[0] if steps else None
    if not isinstance(first, (Resize, ResizeV2)) or getattr(first, "max_size", None) is not None:
        return None
    size = first.size
    size = [size] if isinstance(size, int) else list(size)
    if len(size) == 1:
        side = math.ceil(size[0] * margin)
        return side, side
    return math.ceil(size[1] * margin), math.ceil(size[0] * margin)


class DraftedDecoder:
    """``load_rgb`` bound to the draft size of one transform (what a DataLoader worker pickles)."""

    def __init__(self, transform: Callable, reduced: bool = True) -> None:
        self.draft = draft_size(transform) if reduced else None

    def __call__(self, source: bytes | str | Path) -> Image.Image:
        return load_rgb(source, self.draft)


def is_jpeg(data: bytes) -> bool:
    """True for JPEG bytes (SOI marker)."""
    return data[:3] == b"\xff\xd8\xff"


def gpu_decode(choice: str, device: torch.device | str) -> bool:
    """Whether the vision pass decodes JPEGs on ``device``: ``auto`` = when it is an available CUDA device,
    ``gpu`` = required there (ConfigError otherwise), ``cpu`` = never."""
    if choice not in GPU_DECODE_CHOICES:
        raise ConfigError(f"decode: {choice!r} is not one of {GPU_DECODE_CHOICES}")
    if choice == "cpu":
        return False
    available = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if choice == "gpu" and not available:
        raise ConfigError(f"decode: gpu needs a CUDA device and torchvision with nvjpeg (device is {device}); set decode: cpu or auto")
    return available


def complete_jpeg(data: bytes) -> bool:
    """JPEG bytes that end with the end-of-image marker (zero padding allowed after it).

    Only these go to the device decoder: a truncated JPEG is decoded on the host, where PIL refuses it
    (a counted ``corrupt_image``), as on the CPU path; the device decoders may fill its missing rows grey."""
    return is_jpeg(data) and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def decode_jpegs_on_device(datas: list[bytes], device: torch.device | str) -> list[torch.Tensor]:
    """Decode JPEG bytes on the device (nvjpeg, batched): uint8 [3, H, W] tensors there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)


def decode_on_device(datas: list[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """JPEG bytes decoded on ``device`` (nvjpeg on CUDA, batched; libjpeg-turbo on the CPU), RGB uint8 [3, H, W].

    When the batched call fails, each image is decoded alone; one that still fails is None (the caller
    decodes it on the host with ``load_rgb``, which handles CMYK and the rest, or counts it corrupt)."""
    if not datas:
        return []
    try:
        return list(decode_jpegs_on_device(datas, device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for data in datas:
            try:
                decoded.append(decode_jpegs_on_device([data], device)[0])
            except RuntimeError:
                decoded.append(None)
        return decoded
