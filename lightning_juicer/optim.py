"""AdamW parameter groups and the per-step warm-up + cosine learning-rate schedule.

Core layer (imports torch only): the LightningModule (``models/``) and the governor trainer
(``governor/training.py``) both build their optimizers from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

NO_DECAY_NAMES = ("logit_scale", "logit_bias", "positional_embedding", "class_embedding", "token_embedding")


def param_groups(model: torch.nn.Module | Sequence[torch.nn.Module], weight_decay: float,
                 no_decay_names: Sequence[str] = NO_DECAY_NAMES) -> list[dict]:
    """Two AdamW groups of the trainable parameters of one or several modules: weight decay on matrices, none
    on norms, biases and the parameters whose name contains one of ``no_decay_names`` (embeddings, logit
    scale/bias by default)."""
    decay, no_decay = [], []
    modules = [model] if isinstance(model, torch.nn.Module) else list(model)
    for name, param in ((n, p) for m in modules for n, p in m.named_parameters()):
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(part in name for part in no_decay_names):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """LR multiplier for LambdaLR: linear warm-up from 1/warmup to 1, then cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
