"""On-the-fly selection: the frozen governor scores each batch on the accelerator right after transfer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.governor.selection import resample_scores, select_from_scores


@dataclass
class GovernorConfig:
    """Which frozen governor scores patches: a timm name, ``open_clip:<model>``, a folder, or ``juicer-synthetic``."""

    name: str = "juicer-synthetic"
    pretrained: bool | str = True


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
    ) -> None:
        self.scorer = scorer
        self.strategy = strategy
        self.keep_ratio = keep_ratio
        self.student_grid = tuple(student_grid)
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The governor's patch scores [B, m] of normalised student images, on the student grid (float32)."""
        if next(self.scorer.parameters()).device != images.device:
            self.scorer.to(images.device)
        on_gpu = images.device.type == "cuda"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=on_gpu):
            output = self.scorer(self.scorer.prepare(images.float(), self.mean, self.std))
        return resample_scores(output.scores.float(), output.grid, self.student_grid)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """Kept indices [B, k] (sorted, grid order) and the number of samples that fell back to random."""
        return select_from_scores(self.strategy, self.scores(images), self.keep_ratio)
