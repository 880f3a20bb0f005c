"""Evaluation: zero-shot classification and image-text retrieval, sharded over ranks."""

from lightning_juicer.evaluation.datasets import (
    ImageFolderClassification,
    KarpathyRetrieval,
    WebDatasetEval,
    imagenet_subset,
)
from lightning_juicer.evaluation.metrics import retrieval_recall, zeroshot_accuracy
from lightning_juicer.evaluation.retrieval import evaluate_retrieval
from lightning_juicer.evaluation.zeroshot import EvalResult, evaluate_zeroshot, resolve_templates

__all__ = [
    "EvalResult",
    "ImageFolderClassification",
    "KarpathyRetrieval",
    "WebDatasetEval",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "imagenet_subset",
    "resolve_templates",
    "retrieval_recall",
    "zeroshot_accuracy",
]
