"""Patch grids: scores (or feature planes) on the governor's grid resampled onto the student's grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_scores(scores: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Scores [B, gh*gw] on the governor's grid resampled onto the student's grid [B, dh*dw].

    Each axis that shrinks is area-pooled (``adaptive_avg_pool2d``: every destination cell
    averages the source cells it covers); each axis that grows is then bilinearly interpolated
    (``align_corners=False``, cell centres aligned). Equal grids are returned unchanged.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return scores
    x = scores.float().reshape(scores.shape[0], 1, *src_grid)
    pooled = (min(src_grid[0], dst_grid[0]), min(src_grid[1], dst_grid[1]))
    if pooled != src_grid:
        x = F.adaptive_avg_pool2d(x, pooled)
    if pooled != dst_grid:
        x = F.interpolate(x, size=dst_grid, mode="bilinear", align_corners=False)
    return x.flatten(1)


def resample_features(patches: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Patch features [B, m, W] on the governor's grid resampled (each channel as ``resample_scores``) to [B, m', W]."""
    batch, m, width = patches.shape
    planes = resample_scores(patches.transpose(1, 2).reshape(batch * width, m), src_grid, dst_grid)
    return planes.reshape(batch, width, planes.shape[1]).transpose(1, 2)
