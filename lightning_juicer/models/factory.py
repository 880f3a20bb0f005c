"""Building open_clip models by name, by inline config dict, or from a local path, offline-friendly."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import open_clip
import torch
from open_clip.coca_model import CoCa
from open_clip.factory import parse_model_name
from open_clip.transformer import MultimodalTransformer

from lightning_juicer.errors import ConfigError


_INLINE_CONFIGS = tempfile.TemporaryDirectory(prefix="juicer-model-configs-")  # removed at interpreter exit


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make an inline model config resolvable by name for create_model and get_tokenizer.

    Uses open_clip's public ``add_model_config``: the config is written as ``<name>.json`` into this
    process's folder of inline configs and open_clip rescans its config paths.
    """
    if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):  # what open_clip's rescan keeps
        raise ConfigError("model.init_args.model_config: needs 'embed_dim', 'vision_cfg' and 'text_cfg' like open_clip's JSON configs")
    if not re.fullmatch(r"[\w.+-]+", name):
        raise ConfigError(f"model.init_args.model_name: {name!r} cannot name an inline model_config (use letters, "
                          "digits and . _ + - only)")
    path = os.path.join(_INLINE_CONFIGS.name, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    open_clip.add_model_config(path)


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


def resolve_model_config(
    model_name: str, model_config: dict[str, Any] | None = None, **model_kwargs: Any
) -> dict[str, Any]:
    """The open_clip model config a name stands for (registering an inline one), with constructor overrides applied."""
    schema, identifier = parse_model_name(model_name)
    if model_config is not None:
        register_model_config(model_name, model_config)
    elif schema == "local-dir" and not os.path.isfile(os.path.join(identifier, "open_clip_config.json")):
        raise ConfigError(f"model.init_args.model_name: no open_clip_config.json in local directory {identifier}")
    elif schema is None and model_name not in open_clip.list_models():
        raise ConfigError(
            f"model.init_args.model_name: unknown open_clip model {model_name!r}; "
            "pick one of open_clip.list_models() or give model.init_args.model_config"
        )
    return {**open_clip.get_model_config(model_name), **model_kwargs}


def create_clip_model(
    model_name: str,
    model_config: dict[str, Any] | None = None,
    pretrained: str | None = None,
    **model_kwargs: Any,
) -> torch.nn.Module:
    """An open_clip model (output_dict=True) from a built-in name, an inline config or a local-dir/hf-hub name.

    ``model_kwargs`` override config entries (e.g. ``init_logit_bias``), as open_clip's own ``create_model`` does.
    """
    resolve_model_config(model_name, model_config)
    if parse_model_name(model_name)[0] is None:
        check_pretrained(model_name, pretrained)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, output_dict=True, **model_kwargs)
    except RuntimeError as exn:
        raise ConfigError(f"model.init_args.pretrained: could not load weights for {model_name}: {exn}") from exn
    if isinstance(model, CoCa) and not pretrained and parse_model_name(model_name)[0] is None:
        init_text_decoder(model.text_decoder)
    return model


def init_text_decoder(decoder: MultimodalTransformer) -> None:
    """CoCa's text-decoder init as open_clip intends it; open_clip 3.x never runs it (open_clip issue #554).

    Without it the decoder's ``text_projection`` is ``torch.empty``: whatever memory held, NaN included.
    """
    width, layers = decoder.width, decoder.layers
    proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
    for block in (*decoder.resblocks, *decoder.cross_attn):
        torch.nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        torch.nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        torch.nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    torch.nn.init.normal_(decoder.text_projection, std=width**-0.5)
