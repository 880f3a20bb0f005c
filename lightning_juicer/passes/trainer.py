"""The predict-only Lightning Trainer of a pass: devices, nodes, strategy and precision from its settings.

Lightning's distributed sampler is off (the pass gives each rank whole shards itself), inference mode
on, no logger or checkpoints; progress is ``passes.progress`` (a bar on a terminal, plain lines otherwise).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_juicer.passes.config import PassSettings
from lightning_juicer.passes.progress import progress_callbacks


def resolve_precision(settings: PassSettings) -> str:
    """``precision``, or by default bf16 autocast on CUDA (fp16 where bf16 is missing) and fp32 elsewhere."""
    if settings.precision:
        return str(settings.precision)
    if settings.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def pass_trainer(settings: PassSettings, label: str, callbacks: list[Callback], **trainer_kwargs: Any) -> L.Trainer:
    """The predict-only Trainer of a pass: devices, precision and progress from its settings, no logger or checkpoints."""
    progress, bar = progress_callbacks(label, settings.progress)
    return L.Trainer(**{
        "accelerator": settings.accelerator,
        "devices": settings.devices,
        "num_nodes": settings.num_nodes,
        "strategy": settings.strategy,
        "precision": resolve_precision(settings),
        "logger": False,
        "callbacks": [*callbacks, *progress],
        "enable_progress_bar": bar,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "use_distributed_sampler": False,
        "inference_mode": True,
        **trainer_kwargs,
    })
