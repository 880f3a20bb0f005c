"""Warm-start an open_clip image tower from a timm ViT (e.g. the shipped governor) of the same shape.

The inverse of timm's ``_convert_openai_clip``. timm's patch embedding has a bias and open_clip's
``conv1`` has none; since the bias is added to every patch token, it is folded into the patch rows
of the position embedding, which makes the two towers compute the same tokens. The CLIP projection
``proj`` has no timm counterpart and keeps its random initialisation.
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.models import VisionTransformer as TimmVisionTransformer
from torch import nn

from lightning_juicer.errors import ConfigError

_SWAPS = (
    ("blocks.", "transformer.resblocks."),
    ("norm1", "ln_1"),
    ("norm2", "ln_2"),
    ("attn.qkv.", "attn.in_proj_"),
    ("attn.proj", "attn.out_proj"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)


def timm_to_open_clip_state_dict(model: TimmVisionTransformer) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights (without ``proj``) from a plain timm ViT with a CLS token."""
    state = model.state_dict()
    out = {
        "conv1.weight": state["patch_embed.proj.weight"],
        "class_embedding": state["cls_token"].reshape(-1),
        "ln_post.weight": state["norm.weight"],
        "ln_post.bias": state["norm.bias"],
    }
    pos = state["pos_embed"][0].clone()
    bias = state.get("patch_embed.proj.bias")
    if bias is not None:
        pos[model.num_prefix_tokens:] += bias
    out["positional_embedding"] = pos
    for key, value in state.items():
        if not key.startswith("blocks."):
            continue
        for old, new in _SWAPS:
            key = key.replace(old, new)
        out[key] = value
    return out


def _check_same_shape(visual: OpenClipVisionTransformer, model: nn.Module, source: str, key: str) -> None:
    if not isinstance(model, TimmVisionTransformer) or model.num_prefix_tokens != 1 or model.cls_token is None:
        raise ConfigError(f"{key}: {source} is not a plain timm ViT with one CLS token and no registers")
    if not isinstance(visual, OpenClipVisionTransformer):
        raise ConfigError(f"{key}: the model's image tower is not an open_clip VisionTransformer")
    if not isinstance(visual.ln_pre, nn.Identity) and isinstance(model.norm_pre, nn.Identity):
        raise ConfigError(f"{key}: {source} has no pre-norm; set vision_cfg.no_ln_pre: true")
    mine = {k: tuple(v.shape) for k, v in visual.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in timm_to_open_clip_state_dict(model).items()}
    wrong = sorted(k for k in theirs if mine.get(k) != theirs[k])
    if wrong:
        detail = ", ".join(f"{k} {mine.get(k)} vs {theirs[k]}" for k in wrong[:4])
        raise ConfigError(f"{key}: {source} does not match the image tower's shape ({detail})")


def init_visual_from_timm(
    visual: OpenClipVisionTransformer, model: nn.Module, source: str = "the timm model", key: str = "vision_init"
) -> None:
    """Copy a timm ViT's weights into an open_clip image tower of the same width, depth and grid."""
    _check_same_shape(visual, model, source, key)
    state = timm_to_open_clip_state_dict(model)
    if not isinstance(visual.ln_pre, nn.Identity):
        state["ln_pre.weight"], state["ln_pre.bias"] = model.norm_pre.weight, model.norm_pre.bias
    missing, unexpected = visual.load_state_dict(state, strict=False)
    leftover = [k for k in missing if k != "proj"]
    if leftover or unexpected:
        raise ConfigError(f"{key}: {source} left {leftover or unexpected} unmatched in the image tower")


def warm_start_visual(visual: OpenClipVisionTransformer, name: str) -> None:
    """``model.init_args.vision_init``: load a governor-style timm ViT by name or folder and copy it into ``visual``."""
    from lightning_juicer.governor.loading import NAME_KEY, load_governor_model

    key = "model.init_args.vision_init"
    try:
        model = load_governor_model(name)
    except ConfigError as e:  # the loader names the governor's key; this one is the model's
        raise ConfigError(str(e).replace(NAME_KEY, key)) from e
    init_visual_from_timm(visual, model, name, key)
