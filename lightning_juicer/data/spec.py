"""What the data pipeline needs to know about the model: input size, patch grid, normalisation, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import open_clip


@dataclass(frozen=True)
class DataSpec:
    """Image geometry, preprocessing and tokenizer of the model being trained."""

    image_size: int
    patch_size: int
    tokenizer: Callable = field(repr=False)
    mean: tuple[float, ...] = open_clip.OPENAI_DATASET_MEAN
    std: tuple[float, ...] = open_clip.OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        return self.image_size // self.patch_size, self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image, m."""
        rows, cols = self.grid
        return rows * cols

    def image_transform(self) -> Callable:
        """Deterministic resize + centre crop + normalise (open_clip's eval transform).

        Training uses it too: patch scores are tied to grid cells, so a random crop would
        move the kept patches away from what the governor scored.
        """
        return open_clip.image_transform(
            self.image_size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            resize_mode=self.resize_mode,
        )
