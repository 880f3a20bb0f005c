"""Image-text retrieval (COCO 5k / Flickr30k 1k protocol): encode images and their captions, gather, recall@K."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
from torch.utils.data import DataLoader

from lightning_juicer.evaluation.common import AllGather, SampleKeep, encode_images, gather_rows
from lightning_juicer.evaluation.metrics import RECALL_KS, retrieval_recall
from lightning_juicer.evaluation.zeroshot import EvalResult


def evaluate_retrieval(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    keep: SampleKeep | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
    ks: Sequence[int] = RECALL_KS,
    chunk_size: int = 1024,
) -> EvalResult:
    """Image->text and text->image recall@K of ``model`` on the set, gathered over ranks (same result on each).

    A skipped image (unreadable, or without captions) leaves the set together with its captions.
    """
    local = encode_images(model, loader, device, keep, forward_context, tokenizer=model.tokenizer)
    image_ids, valid, image_features = gather_rows(
        all_gather, world_size, local["index"], local["valid"], local["image_features"]
    )
    text_ids, text_features = gather_rows(all_gather, world_size, local["text_ids"], local["text_features"])
    valid = valid.bool()
    image_ids, image_features = image_ids[valid], image_features[valid]
    text_to_image = torch.searchsorted(image_ids, text_ids[:, 0].contiguous())
    metrics = retrieval_recall(image_features, text_features, text_to_image, ks, chunk_size)
    return EvalResult(metrics, num_samples=len(image_ids), skipped=int((~valid).sum()),
                      extra={"num_texts": len(text_to_image)})
