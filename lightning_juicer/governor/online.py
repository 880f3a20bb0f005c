"""On-the-fly selection: the frozen governor scores each batch on the accelerator right after transfer."""

from __future__ import annotations


import torch
from torch import nn

from lightning_juicer.governor.scoring import PatchScorer, ScoreOutput
from lightning_juicer.selection import SelectionStrategy, build_strategy, resample_features, resample_scores, shape_only


class OnlineSelector(nn.Module):
    """The governor (a submodule) and a selection strategy: normalised student images -> kept patches (student grid).

    It never moves or casts itself: whoever holds it places it (Lightning, as a submodule of the
    LightningModule; or the caller's ``.to``), and the trainer's precision applies (autocast from the
    caller's context; under a ``*-true`` precision the images take the governor's parameter dtype).
    ``strategy`` is a registered name or a ``SelectionStrategy`` (one that needs nothing skips the governor).
    """

    def __init__(
        self,
        scorer: PatchScorer,
        strategy: str | SelectionStrategy,
        keep_ratio: float,
        student_grid: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.strategy = build_strategy(strategy, "selection")
        self.keep_ratio = keep_ratio
        self.student_grid = tuple(student_grid)
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def governor_output(self, images: torch.Tensor) -> ScoreOutput:
        """The governor's output (scores, CLS, grid, patch tokens) for normalised student images."""
        dtype = next(self.scorer.parameters()).dtype
        return self.scorer(self.scorer.prepare(images.float(), self.mean, self.std).to(dtype))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The governor's patch scores [B, m] of normalised student images, on the student grid (float32)."""
        output = self.governor_output(images)
        return resample_scores(output.scores.float(), output.grid, self.student_grid)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the strategy selects from, on the student grid: scores [B, m] or patch features [B, m, W] (float32)."""
        if self.strategy.needs == "nothing":
            return shape_only(images.shape[0], self.student_grid[0] * self.student_grid[1], images.device)
        if self.strategy.needs == "scores":
            return self.scores(images)
        output = self.governor_output(images)
        return resample_features(output.patches.float(), output.grid, self.student_grid)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | int]:
        """Kept indices [B, k] (sorted, grid order; None = all) and how many samples fell back to random patches.

        For score strategies the count is a 0-dim tensor on the device (no host sync; the caller reads it when it
        chooses), else 0.
        """
        if self.strategy.keeps_all(self.keep_ratio):
            return None, 0
        return self.strategy(self.inputs(images), self.keep_ratio)
