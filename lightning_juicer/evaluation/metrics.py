"""Zero-shot top-k accuracy and image-text retrieval recall@K, computed in chunks from features.

Every metric goes through a rank: the number of wrong candidates scoring at least as high as
the right one (0 = ranked first). Ties count against the model, so a collapsed model that
gives every candidate the same score gets no hits. Hit@K is ``rank < K``. With real-valued
embeddings ties do not occur and the figures equal CLIP_benchmark's top-k based ones.
"""

from __future__ import annotations

from typing import Sequence

import torch

ZEROSHOT_KS = (1, 5)
RECALL_KS = (1, 5, 10)


def label_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of the true class in each row of ``logits`` [N, C]: other classes scoring >= it."""
    target = logits.gather(1, labels[:, None])
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], False)
    return ((logits >= target) & others).sum(dim=1)


def hit_rates(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of ranks below each K (top-K accuracy / recall@K); 0 for an empty set."""
    if ranks.numel() == 0:
        return {k: 0.0 for k in ks}
    return {k: (ranks < k).double().mean().item() for k in ks}


def chunked_label_ranks(
    queries: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Rank of each query's true candidate ``labels[i]`` in ``queries @ candidates``, ``chunk_size`` queries at a time."""
    ranks = [
        label_ranks(queries[i : i + chunk_size] @ candidates, labels[i : i + chunk_size])
        for i in range(0, len(queries), chunk_size)
    ]
    return torch.cat(ranks) if ranks else labels.new_zeros(0)


def zeroshot_ranks(
    image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """Rank of the true class for each image; ``classifier`` is [D, C] as open_clip builds it."""
    return chunked_label_ranks(image_features, classifier, labels, chunk_size)


def zeroshot_accuracy(
    image_features: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = ZEROSHOT_KS,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Zero-shot top-K accuracy as ``{"top1": ..., "top5": ...}`` (fractions)."""
    ranks = zeroshot_ranks(image_features, classifier, labels, chunk_size)
    return {f"top{k}": v for k, v in hit_rates(ranks, ks).items()}


def image_to_text_ranks(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per image, the rank of its best-scoring caption among the other images' captions.

    ``text_to_image`` [M] gives each caption's image. An image without captions gets rank M (a miss).
    """
    num_texts = len(text_features)
    ranks = []
    for start in range(0, len(image_features), chunk_size):
        sims = image_features[start : start + chunk_size] @ text_features.T
        image_ids = torch.arange(start, start + len(sims), device=sims.device)
        positive = text_to_image[None, :] == image_ids[:, None]
        best = sims.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((sims >= best) & ~positive).sum(dim=1)
        ranks.append(torch.where(positive.any(dim=1), rank, torch.full_like(rank, num_texts)))
    return torch.cat(ranks) if ranks else text_to_image.new_zeros(0)


def text_to_image_ranks(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per caption, the rank of its image among all other images."""
    return chunked_label_ranks(text_features, image_features.T, text_to_image, chunk_size)


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@K and their mean (``i2t_r1`` ... ``t2i_r10``, ``mean_recall``).

    Image->text is a hit when any of the image's captions is in the top K; the mean is over all
    2 x len(ks) recalls. Similarities are formed ``chunk_size`` rows at a time, so 5k images x 25k
    captions needs about chunk_size x 25k floats at once.
    """
    i2t = hit_rates(image_to_text_ranks(image_features, text_features, text_to_image, chunk_size), ks)
    t2i = hit_rates(text_to_image_ranks(image_features, text_features, text_to_image, chunk_size), ks)
    out = {f"i2t_r{k}": v for k, v in i2t.items()}
    out.update({f"t2i_r{k}": v for k, v in t2i.items()})
    out["mean_recall"] = sum(out.values()) / len(out)
    return out
