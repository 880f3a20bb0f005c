"""Building open_clip models by name, by inline config dict, or from a local path, offline-friendly."""

from __future__ import annotations

import copy
import os
from typing import Any

import open_clip
import torch
from open_clip.factory import _MODEL_CONFIGS, parse_model_name

from lightning_juicer.errors import ConfigError


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make an inline model config resolvable by name for create_model and get_tokenizer."""
    if "vision_cfg" not in config or "text_cfg" not in config:
        raise ConfigError("model.init_args.model_config: needs 'embed_dim', 'vision_cfg' and 'text_cfg' like open_clip's JSON configs")
    _MODEL_CONFIGS[name] = copy.deepcopy(dict(config))


def check_pretrained(model_name: str, pretrained: str | None) -> None:
    """Fail early when ``pretrained`` is neither a known open_clip tag for the model nor an existing file."""
    if not pretrained:
        return
    if os.path.isfile(pretrained) or pretrained in open_clip.list_pretrained_tags_by_model(model_name):
        return
    raise ConfigError(
        f"model.init_args.pretrained: {pretrained!r} is neither a file nor a pretrained tag of {model_name} "
        f"(tags: {open_clip.list_pretrained_tags_by_model(model_name) or 'none'})"
    )


def create_clip_model(
    model_name: str,
    model_config: dict[str, Any] | None = None,
    pretrained: str | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """An open_clip model (output_dict=True) from a built-in name, an inline config or a local-dir/hf-hub name."""
    schema, identifier = parse_model_name(model_name)
    if model_config is not None:
        register_model_config(model_name, model_config)
    elif schema == "local-dir" and not os.path.isdir(identifier):
        raise ConfigError(f"model.init_args.model_name: local directory not found: {identifier}")
    elif schema is None and model_name not in open_clip.list_models():
        raise ConfigError(
            f"model.init_args.model_name: unknown open_clip model {model_name!r}; "
            "pick one of open_clip.list_models() or give model.init_args.model_config"
        )
    if schema is None:
        check_pretrained(model_name, pretrained)
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, output_dict=True, **kwargs)
    except RuntimeError as exn:
        raise ConfigError(f"model.init_args.pretrained: could not load weights for {model_name}: {exn}") from exn
