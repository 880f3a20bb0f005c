"""The one way this project reads torch files: ``torch.load(weights_only=True)``, with a one-line reason when it fails.

``weights_only=True`` unpickles tensors and plain containers (dict, list, str, numbers) only, so a
crafted checkpoint cannot run code (a pickle naming ``os.system`` is refused before anything runs).
Lightning checkpoints written by ``fit`` hold nothing else: their hyper-parameters are plain values.
Everything else is read without pickle (safetensors, Parquet, JSON, ``yaml.safe_load``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lightning_juicer.errors import ConfigError


def load_reason(exn: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (never advising to turn the check off)."""
    text = str(exn)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    refused = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
    if refused is not None:
        return f"refused: it asks to import code ({refused.rstrip('.')}); only tensors and plain values are loaded"
    if isinstance(exn, EOFError) or "Ran out of input" in text:
        return "the file is empty or truncated"
    if "zip archive" in text or "central directory" in text:
        return "the file is truncated or not a torch checkpoint (its zip archive cannot be read)"
    if "mmap can only be used" in text:
        return "not a torch checkpoint (not a torch.save zip file)"
    if isinstance(exn, pickle.UnpicklingError):
        detail = next((line for line in lines if "Weights only load failed" not in line), type(exn).__name__)
        return f"not a torch checkpoint ({detail.rstrip('.')})"
    return lines[0] if lines else type(exn).__name__


def safe_load(path: str | Path, key: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing, empty, corrupt or unsafe file is a ConfigError."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: file not found: {file}")
    if file.stat().st_size == 0:
        raise ConfigError(f"{key}: {file} is empty")
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exn:  # unpickling errors have no common base class
        raise ConfigError(f"{key}: {file} cannot be loaded: {load_reason(exn)}") from exn


def check_lightning_checkpoint(path: str | Path, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint that is missing, unreadable, unsafe or not a Lightning checkpoint (memory-mapped read)."""
    checkpoint = safe_load(path, key, mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} has no state_dict; give a Lightning .ckpt written by fit")
