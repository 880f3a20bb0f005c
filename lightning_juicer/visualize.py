"""Pictures of what the student sees: images with the discarded patches greyed out."""

from __future__ import annotations

import torch
from PIL import Image


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalised [B,3,H,W] images back to [0, 1]."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def grey_out_dropped(images: torch.Tensor, keep: torch.Tensor | None, patch_size: int, grey: float = 0.5) -> torch.Tensor:
    """[B,3,H,W] images in [0, 1] with every patch not in ``keep`` [B,k] blended to grey."""
    if keep is None:
        return images
    batch, _, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    kept = torch.zeros(batch, rows * cols, dtype=torch.bool, device=images.device)
    kept.scatter_(1, keep, True)
    mask = kept.view(batch, 1, rows, cols).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return torch.where(mask, images, 0.3 * images + 0.7 * grey)


def image_grid(images: torch.Tensor, columns: int = 8, scale: int = 1) -> Image.Image:
    """A PIL grid of [B,3,H,W] images in [0, 1], each upscaled ``scale`` times (nearest)."""
    batch, _, height, width = images.shape
    rows = -(-batch // columns)
    grid = Image.new("RGB", (columns * width * scale, rows * height * scale), "white")
    pixels = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    for i, array in enumerate(pixels):
        tile = Image.fromarray(array).resize((width * scale, height * scale), Image.NEAREST)
        grid.paste(tile, ((i % columns) * width * scale, (i // columns) * height * scale))
    return grid
