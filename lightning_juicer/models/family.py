"""The model family (CLIP, SigLIP, CoCa) and its training objective, built from open_clip's losses.

The family follows the open_clip model config, as in open_clip itself: a ``multimodal_cfg`` makes
a CoCa, an ``init_logit_bias`` makes a SigLIP, anything else is a CLIP. The loss can be overridden.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss

from lightning_juicer.errors import ConfigError

Family = Literal["clip", "siglip", "coca"]
FAMILIES: tuple[str, ...] = ("clip", "siglip", "coca")
# SigLIP's initial temperature and bias (Zhai et al. 2023), as open_clip's --siglip sets them.
SIGLIP_INIT = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}


def family_of(model_cfg: dict[str, Any]) -> Family:
    """The family an open_clip model config describes."""
    if "multimodal_cfg" in model_cfg:
        return "coca"
    if model_cfg.get("init_logit_bias") is not None:
        return "siglip"
    return "clip"


def family_model_kwargs(
    loss: str | None, model_cfg: dict[str, Any], overrides: dict[str, Any]
) -> tuple[Family, dict[str, Any]]:
    """The family to train and the model constructor kwargs: the user's overrides over the family's init.

    A CLIP config trained as a SigLIP gets SigLIP's logit scale and bias init, as open_clip's --siglip does.
    """
    family = loss or family_of({**model_cfg, **overrides})
    if family not in FAMILIES:
        raise ConfigError(f"model.init_args.loss: {family!r} is not one of {', '.join(FAMILIES)}")
    defaults = SIGLIP_INIT if family == "siglip" and family_of(model_cfg) == "clip" else {}
    kwargs = {**defaults, **overrides}
    if family_of({**model_cfg, **kwargs}) != family:
        raise ConfigError(
            f"model.init_args.loss: {family!r} does not fit this {family_of(model_cfg)} model config "
            "(coca needs a model_config with multimodal_cfg; a config with init_logit_bias trains with siglip)"
        )
    return family, kwargs


def build_loss(
    family: Family,
    rank: int = 0,
    world_size: int = 1,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    caption_loss_weight: float = 2.0,
    clip_loss_weight: float = 1.0,
    siglip_dist_impl: str | None = None,
    pad_id: int = 0,
) -> torch.nn.Module:
    """open_clip's loss for the family, sized for this process group."""
    if family == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size, dist_impl=siglip_dist_impl)
    common = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True, rank=rank,
                  world_size=world_size)
    if family == "coca":
        return CoCaLoss(caption_loss_weight=caption_loss_weight, clip_loss_weight=clip_loss_weight, pad_id=pad_id,
                        **common)
    return ClipLoss(**common)


def compute_losses(loss_fn: torch.nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named loss terms for an open_clip output dict, plus their sum under ``loss``."""
    image, text, scale = outputs["image_features"], outputs["text_features"], outputs["logit_scale"]
    if isinstance(loss_fn, CoCaLoss):
        terms = loss_fn(image, text, outputs["logits"], outputs["labels"], scale, output_dict=True)
    elif isinstance(loss_fn, SigLipLoss):
        terms = loss_fn(image, text, scale, outputs["logit_bias"], output_dict=True)
    else:
        terms = loss_fn(image, text, scale, output_dict=True)
    return {"loss": sum(terms.values()), **terms}
