"""Zero-shot top-k accuracy and image-text retrieval recall@K, computed in chunks from features.

Zero-shot accuracy is torchmetrics' ``MulticlassStatScores(top_k=K)`` (the top-K match of
``MulticlassAccuracy(top_k=K)``, accumulated over chunks of images; the fraction is taken from its
integer counts so that it is exact): ties are broken by ``torch.topk`` order, as in open_clip and
CLIP_benchmark.

Retrieval goes through a rank: the number of wrong candidates scoring at least as high as the
right one (0 = ranked first). Ties count against the model, so a collapsed model that gives every
candidate the same score gets no hits. Hit@K is ``rank < K``. torchmetrics does not fit the
five-captions protocol: its ``RetrievalRecall`` is the fraction of an image's five captions found in
the top K, not CLIP's "any of them" (that is ``RetrievalHitRate``), and every retrieval metric takes
the whole similarity matrix flattened with a per-query index (COCO 5k: 5k x 25k scores plus as many
int64 indexes, about 1.5 GB) where the rank code below works ``chunk_size`` rows at a time. With
real-valued embeddings ties do not occur and the figures equal CLIP_benchmark's top-k based ones.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.classification import MulticlassStatScores

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
    """Zero-shot top-K accuracy as ``{"top1": ..., "top5": ...}`` (fractions; 0 for an empty set), from
    torchmetrics' top-K matching of ``image_features @ classifier`` ([D, C] as open_clip builds it)."""
    if labels.numel() == 0:
        return {f"top{k}": 0.0 for k in ks}
    num_classes = classifier.shape[1]
    metrics = {k: MulticlassStatScores(num_classes, top_k=min(k, num_classes), average="micro").to(labels.device)
               for k in ks}
    for start in range(0, len(labels), chunk_size):
        logits = image_features[start : start + chunk_size] @ classifier
        for metric in metrics.values():
            metric.update(logits, labels[start : start + chunk_size])
    out = {}
    for k, metric in metrics.items():
        tp, _, _, _, support = metric.compute().tolist()
        out[f"top{k}"] = tp / support
    return out


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
