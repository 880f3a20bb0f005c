"""What the data pipeline and the model tell each other, read-only: the model's input geometry, normalisation and
tokenizer (``DataSpec``), and the on-the-fly selection the data asks the model to run (``OnTheFlySelection``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import open_clip
import torch
from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor


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

    def pixel_transform(self) -> Callable:
        """PIL image -> uint8 [3, H, W]: ``image_transform``'s geometry (resize, crop or pad) without its float
        conversion and normalisation, which ``normalize`` does after the batch reaches the device.

        The training stream's DataLoader workers use it: a uint8 batch is a quarter of a float32 one to copy
        between processes and to the device, and the workers skip the per-pixel float work.
        """
        steps = [step for step in self.image_transform().transforms if not isinstance(step, (ToTensor, Normalize))]
        return Compose([*steps, PILToTensor()])

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] (on any device, any memory format) -> contiguous float32, normalised: exactly
        ``image_transform``'s output for the same pixels (its ``ToTensor`` divides by 255, its ``Normalize``
        subtracts and divides)."""
        pixels = image.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        # Channel by channel with Python scalars: no tensor to move to the device and no check that reads one
        # back (torchvision's normalize asks ``(std == 0).any()``, a host sync on every training step).
        for channel, (mean, std) in enumerate(zip(self.mean, self.std)):
            pixels[..., channel, :, :].sub_(mean).div_(std)
        return pixels


@runtime_checkable
class DataSpecProvider(Protocol):
    """A LightningModule that tells the DataModule its input geometry, normalisation and tokenizer."""

    def data_spec(self) -> DataSpec: ...


@runtime_checkable
class OnTheFlySource(Protocol):
    """A DataModule that may leave the selection of training patches to the model (``JuicerDataModule``)."""

    @property
    def on_the_fly_selection(self) -> OnTheFlySelection | None: ...


@dataclass(frozen=True)
class OnTheFlySelection:
    """The selection the DataModule leaves to the model: score each training batch with the frozen governor.

    The DataModule yields those batches with ``keep`` None; the LightningModule builds the governor from
    this description, holds it (frozen, out of checkpoints) and fills ``keep`` inside its training step,
    under the trainer's device placement and precision.

    Attributes:
        strategy: the selection strategy (``data.init_args.selection``).
        keep_ratio: fraction of patches kept (``data.init_args.keep_ratio``).
        governor: which governor scores the patches (``data.init_args.governor``).
    """

    strategy: Any
    keep_ratio: float
    governor: Any
