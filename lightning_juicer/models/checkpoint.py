"""Reading Lightning checkpoints safely and refusing one made for another model config."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.safe_load import load_reason


def load_lightning_checkpoint(path: str, key: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (tensors and plain containers, no code)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:  # unpickling errors have no common base class
        raise ConfigError(f"{key}: {path} is not a readable Lightning checkpoint: {load_reason(exn)}") from exn
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{key}: {path} has no state_dict; give a Lightning .ckpt written by fit")
    return checkpoint


def _listed(names: list[str], limit: int = 4) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], key: str) -> None:
    """Raise a one-line ConfigError naming missing, unexpected and differently shaped keys, if any."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(
        f"{name} {list(found[name].shape)} vs {list(expected[name].shape)}"
        for name in expected.keys() & found.keys()
        if hasattr(found[name], "shape") and tuple(found[name].shape) != tuple(expected[name].shape)
    )
    if not (missing or unexpected or reshaped):
        return
    problems = [
        f"{label}: {_listed(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("shape checkpoint vs model", reshaped))
        if names
    ]
    raise ConfigError(f"{key}: the checkpoint was made for another model config; " + "; ".join(problems))
