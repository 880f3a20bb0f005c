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


# Model arguments a resumed or evaluated checkpoint may change: they alter neither the weights' meaning
# nor the optimisation (activation checkpointing trades memory for time; the non-finite-loss policy
# only acts on a broken batch). Everything else (architecture, family, loss weights, initialisation,
# optimizer and schedule) must match: Lightning restores the optimizer and scheduler state from the
# checkpoint, so a changed lr or warm-up would be silently ignored.
RESUME_CHANGEABLE = ("grad_checkpointing", "nonfinite_loss")
# Evaluating a checkpoint (validate / test / predict) restores its weights and no optimizer: the
# optimisation settings and the initialisation (replaced by the checkpoint's weights) may also differ.
EVALUATION_CHANGEABLE = RESUME_CHANGEABLE + (
    "lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr_ratio",
    "pretrained", "vision_init", "init_logit_scale", "init_logit_bias",
)


def _plain(value: Any) -> Any:
    """Namespaces, tuples and dicts as JSON-comparable plain values."""
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_checkpoint_hparams(
    path: str, class_path: str | None, init_args: Mapping[str, Any], key: str = "ckpt_path",
    changeable: tuple[str, ...] = RESUME_CHANGEABLE,
) -> None:
    """Refuse, in one line naming the differing keys, a checkpoint whose model arguments differ from the config's.

    Lightning's CLI would otherwise replace the configured model arguments by the checkpoint's
    without a word. Keys in ``changeable`` may differ (``RESUME_CHANGEABLE`` when resuming a fit,
    ``EVALUATION_CHANGEABLE`` when evaluating); keys the checkpoint does not record
    (written by an older version) are not compared.
    """
    hparams = dict(load_lightning_checkpoint(path, key).get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    stored_class = hparams.pop("_class_path", None)
    if stored_class and class_path and stored_class != class_path:
        raise ConfigError(f"{key}: {path} holds a {stored_class}, the config builds a {class_path}")
    wanted, stored = _plain(init_args), _plain(hparams)
    differing = sorted(name for name in wanted.keys() & stored.keys()
                       if name not in changeable and wanted[name] != stored[name])
    if differing:
        shown = "; ".join(f"model.init_args.{n}: checkpoint {stored[n]!r} vs config {wanted[n]!r}"
                          for n in differing[:3])
        more = f" (+{len(differing) - 3} more)" if len(differing) > 3 else ""
        raise ConfigError(f"{key}: {path} was trained with another model config: {shown}{more}; use the run's "
                          f"config.yaml (only {', '.join(changeable)} may change)")
