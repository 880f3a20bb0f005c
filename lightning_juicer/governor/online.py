"""On-the-fly selection: the frozen governor scores each batch on the accelerator right after transfer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.governor.selection import (
    keep_count,
    patch_kmeans,
    resample_scores,
    select_cluster,
    select_from_scores,
)


@dataclass
class GovernorConfig:
    """Which frozen governor scores patches: a timm name, ``open_clip:<model>``, a folder, or ``juicer-synthetic``."""

    name: str = "juicer-synthetic"
    pretrained: bool | str = True
    num_clusters: int = 4  # selection=cluster (Cluster*): k-means clusters of each image's patch features


class OnlineSelector:
    """Scores normalised student images with the governor and returns kept indices on the student grid."""

    def __init__(
        self,
        scorer: PatchScorer,
        strategy: str,
        keep_ratio: float,
        student_grid: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_clusters: int = 4,
    ) -> None:
        self.scorer = scorer
        self.strategy = strategy
        self.keep_ratio = keep_ratio
        self.student_grid = tuple(student_grid)
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_clusters = num_clusters

    @torch.no_grad()
    def _governor_output(self, images: torch.Tensor):
        if next(self.scorer.parameters()).device != images.device:
            self.scorer.to(images.device)
        on_gpu = images.device.type == "cuda"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=on_gpu):
            return self.scorer(self.scorer.prepare(images.float(), self.mean, self.std))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The governor's patch scores [B, m] of normalised student images, on the student grid (float32)."""
        output = self._governor_output(images)
        return resample_scores(output.scores.float(), output.grid, self.student_grid)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """Kept indices [B, k] (sorted, grid order) and the number of samples that fell back to random."""
        if self.strategy == "cluster":
            output = self._governor_output(images)
            return self.cluster(output.patches.float(), output.grid), 0
        return select_from_scores(self.strategy, self.scores(images), self.keep_ratio)

    def cluster(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """Cluster*: patch features [B, m, W] resampled onto the student grid, clustered, kept evenly per cluster."""
        batch, m, width = patches.shape
        num_patches = self.student_grid[0] * self.student_grid[1]
        if self.keep_ratio >= 1.0:
            return None
        planes = resample_scores(patches.transpose(1, 2).reshape(batch * width, m), grid, self.student_grid)
        features = planes.reshape(batch, width, num_patches).transpose(1, 2)
        labels = patch_kmeans(features, self.num_clusters)
        return select_cluster(labels, keep_count(num_patches, self.keep_ratio))
