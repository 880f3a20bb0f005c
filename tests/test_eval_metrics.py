"""Zero-shot and retrieval metrics against brute-force references, plus the sharding helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.common import SampleKeep, gather_rows, rank_indices, unique_rows
from lightning_juicer.evaluation.metrics import (
    hit_rates,
    image_to_text_ranks,
    label_ranks,
    retrieval_recall,
    text_to_image_ranks,
    zeroshot_accuracy,
    zeroshot_ranks,
)
from lightning_juicer.evaluation.zeroshot import resolve_templates


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _brute_i2t(sims: torch.Tensor, text_to_image: list[int]) -> list[int]:
    """Rank of each image's best caption: wrong captions scoring >= it, by plain loops."""
    ranks = []
    for i in range(sims.shape[0]):
        mine = [j for j, img in enumerate(text_to_image) if img == i]
        if not mine:
            ranks.append(len(text_to_image))
            continue
        best = max(sims[i, j].item() for j in mine)
        ranks.append(sum(1 for j in range(sims.shape[1]) if j not in mine and sims[i, j].item() >= best))
    return ranks


def _brute_t2i(sims: torch.Tensor, text_to_image: list[int]) -> list[int]:
    """Rank of each caption's image: other images scoring >= it, by plain loops."""
    return [
        sum(1 for i in range(sims.shape[0]) if i != img and sims[i, j].item() >= sims[img, j].item())
        for j, img in enumerate(text_to_image)
    ]


def _open_clip_topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """open_clip's zero-shot accuracy (torch.topk), the reference for tie-free scores."""
    pred = logits.topk(k, dim=1).indices
    return (pred == labels[:, None]).any(dim=1).double().mean().item()


# ------------------------------------------------------------------------------ zero-shot


def test_perfect_zeroshot_embeddings_give_top1_one():
    classifier = _unit(40, 32).T  # [D, C] as open_clip builds it
    labels = torch.arange(40).repeat(3)
    features = classifier.T[labels]
    assert zeroshot_accuracy(features, classifier, labels) == {"top1": 1.0, "top5": 1.0}


def test_random_zeroshot_embeddings_give_chance():
    classifier = _unit(100, 64, seed=1).T
    features = _unit(5000, 64, seed=2)
    labels = torch.randint(0, 100, (5000,), generator=torch.Generator().manual_seed(3))
    acc = zeroshot_accuracy(features, classifier, labels)
    assert acc["top1"] == pytest.approx(0.01, abs=0.006)
    assert acc["top5"] == pytest.approx(0.05, abs=0.015)


def test_zeroshot_matches_brute_force_and_open_clip_topk():
    classifier = _unit(17, 8, seed=4).T
    features = _unit(300, 8, seed=5)
    labels = torch.randint(0, 17, (300,), generator=torch.Generator().manual_seed(6))
    logits = features @ classifier
    brute = [sum(1 for c in range(17) if c != y and logits[n, c] >= logits[n, y])
             for n, y in enumerate(labels.tolist())]
    assert zeroshot_ranks(features, classifier, labels, chunk_size=7).tolist() == brute
    acc = zeroshot_accuracy(features, classifier, labels, ks=(1, 3, 5), chunk_size=11)
    for k in (1, 3, 5):
        assert acc[f"top{k}"] == pytest.approx(_open_clip_topk(logits, labels, k), abs=1e-12)


def test_ties_count_against_the_model():
    logits = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    assert label_ranks(logits, torch.tensor([0, 1])).tolist() == [2, 0]
    collapsed = torch.ones(6, 4) / 2
    assert retrieval_recall(collapsed[:2], collapsed, torch.tensor([0, 0, 0, 1, 1, 1]))["i2t_r1"] == 0.0


# ------------------------------------------------------------------------------ retrieval


def _five_captions(num_images: int) -> torch.Tensor:
    return torch.arange(num_images).repeat_interleave(5)


def test_perfect_retrieval_embeddings_give_recall_one():
    images = _unit(50, 32, seed=7)
    text_to_image = _five_captions(50)
    texts = F.normalize(images[text_to_image] + 0.01 * _unit(250, 32, seed=8), dim=-1)
    metrics = retrieval_recall(images, texts, text_to_image)
    assert all(v == 1.0 for v in metrics.values()), metrics


def test_shuffled_retrieval_embeddings_give_chance():
    images = _unit(200, 64, seed=9)
    text_to_image = _five_captions(200)
    texts = images[text_to_image]
    shuffled = text_to_image[torch.randperm(1000, generator=torch.Generator().manual_seed(10))]
    recall = retrieval_recall(images, texts, shuffled)
    # t2i R@K = K / N; i2t R@K ~ 1 - C(995, K) / C(1000, K) ~ 5K / 1000 for 5 captions among 1000.
    for k, t2i_chance, i2t_chance in ((1, 0.005, 0.005), (5, 0.025, 0.0248), (10, 0.05, 0.0489)):
        assert recall[f"t2i_r{k}"] == pytest.approx(t2i_chance, abs=0.025)
        assert recall[f"i2t_r{k}"] == pytest.approx(i2t_chance, abs=0.05)
    assert recall["mean_recall"] < 0.1


def test_hand_made_three_images_fifteen_captions():
    # scores[j] = similarity of caption j to images 0, 1, 2; captions 5i..5i+4 belong to image i.
    scores = torch.tensor([
        [0.9, 0.1, 0.0], [0.5, 0.6, 0.1], [0.2, 0.3, 0.7], [0.4, 0.1, 0.0], [0.3, 0.2, 0.1],
        [0.1, 0.55, 0.2], [0.7, 0.6, 0.0], [0.0, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.2],
        [0.1, 0.1, 0.5], [0.5, 0.4, 0.3], [0.2, 0.6, 0.4], [0.3, 0.3, 0.3], [0.0, 0.0, 0.2],
    ])
    images, texts, text_to_image = torch.eye(3), scores, _five_captions(3)
    # Image 0: best own caption 0.9, nothing else >= 0.9 -> rank 0. Image 1: best own 0.6 (caption 6),
    # captions 1 and 12 also score 0.6 (ties count against) -> rank 2. Image 2: best own 0.5, caption 2
    # scores 0.7 -> rank 1.
    assert image_to_text_ranks(images, texts, text_to_image).tolist() == [0, 2, 1]
    assert text_to_image_ranks(images, texts, text_to_image).tolist() == [0, 1, 2, 0, 0, 0, 1, 0, 0, 1, 0, 2, 1, 2, 0]
    metrics = retrieval_recall(images, texts, text_to_image)
    assert metrics["i2t_r1"] == pytest.approx(1 / 3)
    assert metrics["t2i_r1"] == pytest.approx(8 / 15)
    assert metrics["i2t_r5"] == metrics["i2t_r10"] == metrics["t2i_r5"] == metrics["t2i_r10"] == 1.0
    assert metrics["mean_recall"] == pytest.approx((1 / 3 + 8 / 15 + 4) / 6)


def test_retrieval_matches_brute_force_with_uneven_captions():
    gen = torch.Generator().manual_seed(11)
    counts = torch.randint(0, 7, (30,), generator=gen)  # 0..6 captions, some images none
    text_to_image = torch.arange(30).repeat_interleave(counts)
    images, texts = _unit(30, 6, seed=12), _unit(len(text_to_image), 6, seed=13)
    sims = images @ texts.T
    assert image_to_text_ranks(images, texts, text_to_image, 4).tolist() == _brute_i2t(sims, text_to_image.tolist())
    assert text_to_image_ranks(images, texts, text_to_image, 4).tolist() == _brute_t2i(sims, text_to_image.tolist())


def test_chunked_equals_unchunked():
    images = _unit(97, 16, seed=14)
    text_to_image = _five_captions(97)
    texts = F.normalize(images[text_to_image] + 0.9 * _unit(485, 16, seed=15), dim=-1)
    whole = retrieval_recall(images, texts, text_to_image, chunk_size=10**6)
    for chunk in (1, 7, 64):
        assert retrieval_recall(images, texts, text_to_image, chunk_size=chunk) == whole
    classifier, labels = _unit(10, 16, seed=16).T, torch.arange(97) % 10
    assert zeroshot_accuracy(images, classifier, labels, chunk_size=5) == zeroshot_accuracy(images, classifier, labels)


def test_hit_rates_of_empty_set_are_zero():
    assert hit_rates(torch.zeros(0, dtype=torch.long), (1, 5)) == {1: 0.0, 5: 0.0}


# ------------------------------------------------------------------------------ sharding helpers


def test_rank_indices_cover_the_set_with_equal_counts():
    for n, world in ((10, 3), (2, 4), (8, 2)):
        shares = [rank_indices(n, r, world) for r in range(world)]
        assert len({len(s) for s in shares}) == 1
        assert sorted(set(i for s in shares for i in s)) == list(range(n))


def test_unique_rows_drops_duplicates_and_sorts():
    ids = torch.tensor([3, 1, 3, 0, 1])
    rows = torch.tensor([[30.0], [10.0], [31.0], [0.0], [11.0]])
    out_ids, out_rows = unique_rows(ids, rows)
    assert out_ids.tolist() == [0, 1, 3] and out_rows.flatten().tolist() == [0.0, 10.0, 30.0]
    pair_ids, _ = unique_rows(torch.tensor([[2, 1], [0, 4], [2, 1], [2, 0]]), torch.zeros(4))
    assert pair_ids.tolist() == [[0, 4], [2, 0], [2, 1]]


def test_gather_rows_pads_and_strips_across_fake_ranks():
    shares = {0: (torch.tensor([0, 2, 4]), torch.tensor([[0.0], [2.0], [4.0]])),
              1: (torch.tensor([1, 3]), torch.tensor([[1.0], [3.0]]))}
    calls = []

    def fake_all_gather(tensor):  # what rank 0 would receive: its own padded tensor and rank 1's
        calls.append(tensor)
        if len(calls) == 1:
            return torch.stack([tensor, torch.tensor([[2, 0], [2, 1]])])
        other = shares[1][len(calls) - 2]
        padded = torch.full_like(tensor, -1 if len(calls) == 2 else 0)
        padded[: len(other)] = other
        return torch.stack([tensor, padded])

    ids, rows = gather_rows(fake_all_gather, 2, *shares[0])
    assert ids.tolist() == [0, 1, 2, 3, 4] and rows.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_sample_keep_depends_only_on_the_sample_index():
    keep = SampleKeep("random", 64, 0.5, seed=3)
    a, b = keep(torch.tensor([5, 9, 2])), keep(torch.tensor([2, 5]))
    assert a.shape == (3, 32) and torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert torch.equal(a[0], a[0].sort().values)
    assert SampleKeep("random", 64, 1.0)(torch.tensor([1])) is None


def test_resolve_templates():
    assert len(resolve_templates("openai")) == 80 and len(resolve_templates("simple")) == 7
    assert resolve_templates(["a {c} here", "{}!"]) == ["a {} here", "{}!"]
    with pytest.raises(ConfigError, match="templates"):
        resolve_templates("nope")
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_templates(["no slot"])
