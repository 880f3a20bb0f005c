from __future__ import annotations

import pytest
import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.selection import (
    STRATEGIES,
    build_strategy,
    keep_count,
    resample_scores,
    select_random,
    select_stratified,
    select_topk,
    shape_only,
)


def select_from_scores(name, scores, keep_ratio, generator=None):
    """Kept indices and fallback count of the registered strategy ``name`` on scores [B, m]."""
    return build_strategy(name, "selection")(scores, keep_ratio, generator)


def select_patches(name, batch_size, num_patches, keep_ratio, generator=None):
    """Kept indices of a strategy that needs nothing (refused for the others)."""
    return build_strategy(name, "selection", ("nothing",))(shape_only(batch_size, num_patches), keep_ratio, generator)[0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_sorted_unique(keep: torch.Tensor) -> bool:
    return bool((keep[:, 1:] > keep[:, :-1]).all())


def test_keep_count_rounds_and_keeps_at_least_one():
    assert keep_count(196, 0.5) == 98
    assert keep_count(196, 0.25) == 49
    assert keep_count(16, 0.01) == 1
    assert keep_count(16, 1.0) == 16


def test_data_only_api_is_unchanged():
    assert {name: STRATEGIES.get(name).needs for name in STRATEGIES} == {
        "full": "nothing", "random": "nothing", "topk": "scores", "stratified": "scores", "mix": "scores",
        "topk_context": "scores", "cluster": "features"}
    assert select_patches("full", 2, 16, 0.5) is None
    assert select_patches("random", 2, 16, 1.0) is None
    keep = select_patches("random", 4, 16, 0.5, generator=_gen())
    assert keep.shape == (4, 8) and keep.dtype == torch.long and _is_sorted_unique(keep)
    assert torch.equal(keep, select_random(4, 16, 8, _gen()))
    with pytest.raises(ConfigError, match="selection: 'topk' needs the governor's patch scores"):
        select_patches("topk", 2, 16, 0.5)
    with pytest.raises(ConfigError, match="selection: 'best' is not a selection strategy"):
        select_patches("best", 2, 16, 0.5)


def test_topk_keeps_the_k_largest_in_grid_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.5, 0.0], [5.0, -1.0, 4.0, 3.0, -2.0, 6.0]])
    keep = select_topk(scores, 3)
    assert keep.tolist() == [[1, 3, 4], [0, 2, 5]]
    assert keep.dtype == torch.long


def test_topk_ties_go_to_the_lower_grid_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]])
    assert select_topk(scores, 2).tolist() == [[1, 2]]
    assert select_topk(torch.zeros(2, 10), 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_k_equal_one_picks_the_best_patch_and_one_stratified_patch():
    scores = torch.tensor([[0.2, 0.1, 0.8, 0.4]])
    assert select_topk(scores, 1).tolist() == [[2]]
    picked = {select_stratified(scores, 1, _gen(seed)).item() for seed in range(40)}
    assert picked == {0, 1, 2, 3}  # one stratum = the whole ranking
    keep, fallbacks = select_from_scores("topk", scores, 0.01)
    assert keep.tolist() == [[2]] and fallbacks == 0


def test_stratified_draws_one_patch_per_score_stratum():
    num_patches, k = 16, 4
    scores = torch.randn(8, num_patches, generator=_gen(1))
    keep = select_stratified(scores, k, _gen(2))
    assert keep.shape == (8, k) and _is_sorted_unique(keep)
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)  # rank of each patch, 0 = best
    kept_ranks = ranks.gather(1, keep).sort(dim=1).values
    assert torch.equal(kept_ranks // (num_patches // k), torch.arange(k).expand(8, k))


def test_stratified_spans_the_score_distribution_unlike_topk():
    scores = torch.arange(20.0).flip(0).unsqueeze(0).repeat(5, 1)  # patch i has rank i
    topk = select_topk(scores, 4)
    assert topk.tolist() == [[0, 1, 2, 3]] * 5
    strat = select_stratified(scores, 4, _gen(3))
    assert ((strat < 10).any(dim=1) & (strat >= 10).any(dim=1)).all()  # top and bottom halves
    assert not torch.equal(strat, topk)
    assert torch.equal(strat // 5, torch.arange(4).expand(5, 4))  # strata of 5 ranks each


def test_stratified_with_uneven_strata_and_k_equal_m():
    scores = torch.randn(3, 10, generator=_gen(4))
    keep = select_stratified(scores, 3, _gen(5))  # strata of 3, 3, 4 ranks
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1).gather(1, keep).sort(dim=1).values
    assert ((ranks[:, 0] < 3) & (ranks[:, 1] >= 3) & (ranks[:, 1] < 6) & (ranks[:, 2] >= 6)).all()
    assert select_stratified(scores, 10, _gen()).tolist() == [list(range(10))] * 3


def test_stratified_is_reproducible_with_a_generator():
    scores = torch.randn(4, 49, generator=_gen(6))
    assert torch.equal(select_stratified(scores, 12, _gen(7)), select_stratified(scores, 12, _gen(7)))


def test_select_from_scores_dispatches_every_strategy():
    scores = torch.randn(4, 16, generator=_gen(8))
    keep, bad = select_from_scores("topk", scores, 0.5)
    assert bad == 0 and torch.equal(keep, select_topk(scores, 8))
    keep, bad = select_from_scores("stratified", scores, 0.5, _gen(9))
    assert bad == 0 and torch.equal(keep, select_stratified(scores, 8, _gen(9)))
    keep, bad = select_from_scores("random", scores, 0.25, _gen(10))
    assert bad == 0 and torch.equal(keep, select_random(4, 16, 4, _gen(10)))
    assert select_from_scores("full", scores, 0.5) == (None, 0)
    assert select_from_scores("topk", scores, 1.0) == (None, 0)
    with pytest.raises(ConfigError, match="is not a selection strategy"):
        select_from_scores("best", scores, 0.5)


@pytest.mark.parametrize("strategy", ["topk", "stratified"])
def test_non_finite_scores_fall_back_to_random_and_are_counted(strategy):
    scores = torch.randn(5, 16, generator=_gen(11))
    scores[1, 3] = float("nan")
    scores[3, 0] = float("inf")
    scores[4, 7] = -float("inf")
    keep, bad = select_from_scores(strategy, scores, 0.5, _gen(12))
    assert bad == 3
    assert keep.shape == (5, 8) and keep.dtype == torch.long and _is_sorted_unique(keep)
    if strategy == "topk":
        assert torch.equal(keep[[0, 2]], select_topk(scores[[0, 2]], 8))
    assert keep.min() >= 0 and keep.max() < 16


def test_all_non_finite_batch_is_still_a_valid_selection():
    keep, bad = select_from_scores("topk", torch.full((3, 9), float("nan")), 0.34, _gen(13))
    assert bad == 3 and keep.shape == (3, 3) and _is_sorted_unique(keep)


def test_resample_identity_for_equal_grids():
    scores = torch.randn(2, 49, generator=_gen(14))
    assert torch.equal(resample_scores(scores, (7, 7), (7, 7)), scores)


def test_resample_pools_a_hot_cell_into_its_destination_cell_14_to_7():
    scores = torch.zeros(1, 14 * 14)
    scores[0, 5 * 14 + 9] = 4.0  # row 5, col 9 -> pooled row 2, col 4
    out = resample_scores(scores, (14, 14), (7, 7))
    assert out.shape == (1, 49)
    assert out.argmax().item() == 2 * 7 + 4
    assert out[0, 2 * 7 + 4].item() == pytest.approx(1.0)  # area mean of a 2x2 block
    assert out.sum().item() == pytest.approx(1.0)


def test_resample_upsamples_a_hot_cell_bilinearly_4_to_8():
    scores = torch.zeros(1, 16)
    scores[0, 1 * 4 + 2] = 1.0  # row 1, col 2 -> rows 2-3, cols 4-5
    out = resample_scores(scores, (4, 4), (8, 8)).view(8, 8)
    peak = out.max()
    hot = {tuple(rc) for rc in (out == peak).nonzero().tolist()}
    assert hot == {(2, 4), (2, 5), (3, 4), (3, 5)}
    assert peak.item() == pytest.approx(0.75 * 0.75)


def test_resample_non_integer_and_mixed_ratios():
    scores = torch.zeros(1, 16 * 16)
    scores[0, 15 * 16 + 15] = 1.0  # bottom-right corner, 16 -> 14 (DINOv2/14 onto a /16 student)
    out = resample_scores(scores, (16, 16), (14, 14))
    assert out.shape == (1, 196) and out.argmax().item() == 195
    mixed = resample_scores(torch.arange(8.0).view(1, 8), (2, 4), (4, 2))
    assert mixed.shape == (1, 8)
    assert mixed.view(4, 2)[0].tolist() == pytest.approx([0.5, 2.5])  # cols pooled, rows interpolated
