"""The project's one deterministic crop of a decoded image: resize the shortest side, then centre crop.

``crop_transform`` returns uint8 ``[3, H, W]`` (the governor's input in the vision and embeddings
passes, normalised later on the device). The model's own input (``DataSpec.image_transform``) is
open_clip's eval transform: for a square size the same resize + centre crop, then float conversion and
normalisation (tests/test_decode.py checks the pixels agree).
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2 as T

INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def tensor_crop_transform(image_size: tuple[int, int], interpolation_name: str = "bicubic") -> Callable:
    """uint8 [3, h, w] tensor (on any device) -> uint8 [3, H, W]: the same resize + centre crop as
    ``crop_transform``, for images decoded on the device (the vision pass's GPU decode)."""
    height, width = image_size
    interpolation = INTERPOLATIONS.get(interpolation_name, T.InterpolationMode.BICUBIC)
    return T.Compose([T.Resize(max(height, width), interpolation=interpolation, antialias=True),
                      T.CenterCrop((height, width))])


def crop_transform(image_size: tuple[int, int], interpolation_name: str = "bicubic") -> Callable:
    """PIL image -> uint8 [3, H, W]: resize shortest side + centre crop to ``image_size`` (unknown
    interpolation names fall back to bicubic)."""
    return T.Compose([*tensor_crop_transform(image_size, interpolation_name).transforms, T.PILToTensor()])
