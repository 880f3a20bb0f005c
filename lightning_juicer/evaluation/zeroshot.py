"""Zero-shot classification: open_clip's classifier from class names x templates, then top-k over the gathered set."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES, build_zero_shot_classifier
from torch.utils.data import DataLoader

from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.common import AllGather, SampleKeep, encode_images, gather_rows
from lightning_juicer.evaluation.metrics import ZEROSHOT_KS, zeroshot_accuracy

TEMPLATE_SETS: dict[str, Sequence] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_IMAGENET_TEMPLATES,
    "photo": ("a photo of a {}.",),
}


@dataclass
class EvalResult:
    """Metrics (fractions) of one evaluation, with the number of samples scored and skipped."""

    metrics: dict[str, float]
    num_samples: int
    skipped: int
    extra: dict = field(default_factory=dict)


def resolve_templates(templates: str | Sequence[str], key: str = "templates") -> list:
    """Prompt templates by name (``openai`` 80, ``simple`` 7, ``photo``) or a list of ``{}`` / ``{c}`` strings."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ConfigError(f"{key}: unknown template set {templates!r}; use one of {sorted(TEMPLATE_SETS)} "
                              "or a list of strings with '{{}}' or '{{c}}' where the class name goes")
        return list(TEMPLATE_SETS[templates])
    out = [t.replace("{c}", "{}") for t in templates]
    if not out or any(t.count("{}") != 1 for t in out):
        raise ConfigError(f"{key}: every template needs exactly one '{{}}' (or '{{c}}') for the class name")
    return out


def zeroshot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Class weights [D, C] (open_clip's ``build_zero_shot_classifier``), the classes shared out over ranks."""
    if len(classnames) < world_size:
        rank, world_size = 0, 1
    mine = list(classnames[rank::world_size])
    with forward_context():
        weights = build_zero_shot_classifier(model, tokenizer, mine, templates, num_classes_per_batch=10,
                                             device=device)
    ids = torch.arange(rank, len(classnames), world_size, device=device)
    _, rows = gather_rows(all_gather, world_size, ids, weights.T.float().contiguous())
    return rows.T


def evaluate_zeroshot(
    model: torch.nn.Module,
    loader: DataLoader,
    classnames: Sequence[str],
    templates: Sequence,
    device: torch.device,
    keep: SampleKeep | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_gather: AllGather | None = None,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
    ks: Sequence[int] = ZEROSHOT_KS,
    chunk_size: int = 4096,
    classnames_key: str = "classnames",
) -> EvalResult:
    """Zero-shot top-k of ``model`` on this rank's ``loader`` share, gathered over ranks (same result on each)."""
    classifier = zeroshot_classifier(model, model.tokenizer, classnames, templates, device, rank, world_size,
                                     all_gather, forward_context)
    local = encode_images(model, loader, device, keep, forward_context)
    _, valid, labels, features = gather_rows(
        all_gather, world_size, local["index"], local["valid"], local["label"], local["image_features"]
    )
    valid = valid.bool() & (labels >= 0)
    labels, features = labels[valid], features[valid]
    if len(labels) and int(labels.max()) >= len(classnames):
        raise ConfigError(f"{classnames_key}: label {int(labels.max())} found but only {len(classnames)} class names")
    metrics = zeroshot_accuracy(features, classifier.to(features.dtype), labels, ks, chunk_size)
    return EvalResult(metrics, num_samples=len(labels), skipped=int((~valid).sum()),
                      extra={"num_classes": len(classnames)})
