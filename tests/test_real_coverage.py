"""Governor coverage on the real-photo benchmark (lightning_juicer.governor.coverage), on a scorer whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_juicer.governor.scoring import ScoreOutput
from tests.conftest import REAL_PHOTOS_SKIP

pytestmark = pytest.mark.skipif(REAL_PHOTOS_SKIP is not None, reason=str(REAL_PHOTOS_SKIP))


class Oracle(torch.nn.Module):
    """Scores a patch by how bright it is on the benchmark image, or by the masks' own object fraction."""

    def __init__(self, fractions: list[np.ndarray] | None, size: int = 96, patch: int = 16, invert: bool = False):
        super().__init__()
        self.fractions, self.invert = fractions, invert
        self.image_size, self.patch_size = (size, size), (patch, patch)
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> ScoreOutput:
        n = images.shape[0]
        scores = torch.from_numpy(np.stack(self.fractions[self.calls:self.calls + n])).float()
        self.calls += n
        scores = -scores if self.invert else scores
        return ScoreOutput(scores + 1e-4 * torch.rand(scores.shape), torch.zeros(n, 4), (6, 6))


def test_an_oracle_covers_everything_its_inverse_nothing_and_random_about_half(tiny_real_photos):
    from lightning_juicer.governor.coverage import governor_coverage, patch_object_fraction, read_samples

    fractions = [patch_object_fraction(meta, (96, 96), (16, 16)) for _, _, meta in read_samples(tiny_real_photos.train_shards)]
    assert len(fractions) == 80 and all(f.shape == (36,) and 0 <= f.min() and f.max() <= 1 for f in fractions)
    best = governor_coverage(Oracle(fractions), tiny_real_photos.train_shards, num_images=None, batch_size=16)
    worst = governor_coverage(Oracle(fractions, invert=True), tiny_real_photos.train_shards, num_images=None,
                              batch_size=16)
    assert best["num_images"] == 80 and best["grid"] == [6, 6]
    assert best["coverage_topk"] == 1.0 and worst["coverage_topk"] < 0.05
    assert 0.35 < best["coverage_random"] < 0.65
    assert 0.05 < best["object_patch_share"] < 0.5
    assert set(best["coverage_topk_by_photo"].values()) == {1.0}
