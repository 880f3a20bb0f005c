"""Images/s and image tokens/s, through Lightning's ThroughputMonitor.

Logged as ``train/samples_per_sec`` (images/s over all ranks) and ``train/items_per_sec``
(image tokens/s: CLS + kept patches per image, the tokens the image tower actually runs on).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


def batch_images(batch: dict) -> int:
    """Number of images in a contract batch."""
    return int(batch["image"].shape[0])


class ImageTokens:
    """Image tokens the tower runs on for a batch: B x (1 + k), k = all m patches when ``keep`` is None."""

    def __init__(self, num_patches: int) -> None:
        self.num_patches = num_patches

    def __call__(self, batch: dict) -> int:
        keep = batch.get("keep")
        kept = self.num_patches if keep is None else keep.shape[1]
        return batch_images(batch) * (1 + kept)


class ImageThroughput(ThroughputMonitor):
    """ThroughputMonitor counting images and image tokens of the batch contract."""

    def __init__(self, window_size: int = 20, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=batch_images, window_size=window_size, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Learn the patch count from the model, then set up the monitor."""
        self.length_fn = ImageTokens(pl_module.data_spec().num_patches)
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = None
        super().setup(trainer, pl_module, stage)
