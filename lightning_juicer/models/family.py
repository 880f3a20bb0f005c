"""Model families (CLIP, SigLIP, CoCa) in a registry: each owns its open_clip loss and its forward differences.

The family follows the open_clip model config, as in open_clip itself: a ``multimodal_cfg`` makes a CoCa,
an ``init_logit_bias`` makes a SigLIP, anything else is a CLIP (``family_of``). ``model.init_args.loss``
may name another registered family that fits the config (a CLIP config trains as a SigLIP with
SigLIP's temperature and bias init, as open_clip's ``--siglip`` does). A new family is one class here
(or in its own file) registered with ``@FAMILIES.register(name)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from open_clip.loss import ClipLoss, CoCaLoss, SigLipLoss

from lightning_juicer.errors import ConfigError
from lightning_juicer.registry import Registry

FAMILIES: Registry[ModelFamily] = Registry("model family", "model.init_args.loss")


class ModelFamily:
    """One CLIP-family objective: which configs it describes, its loss, and how a batch becomes loss inputs."""

    registered_name: ClassVar[str]
    loss_class: ClassVar[type[torch.nn.Module]]
    logged_terms: ClassVar[tuple[str, ...]] = ()  # loss terms logged next to the total (``train/<term>``)
    # Constructor overrides when a config of another family is trained as this one (none by default).
    init_from_clip: ClassVar[dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return self.registered_name

    def __str__(self) -> str:
        return self.name

    @classmethod
    def describes(cls, model_cfg: dict[str, Any]) -> bool:
        """Whether an open_clip model config is a model of this family."""
        raise NotImplementedError

    def build_loss(self, model: torch.nn.Module, *, rank: int, world_size: int, local_loss: bool,
                   gather_with_grad: bool, caption_loss_weight: float, clip_loss_weight: float,
                   siglip_dist_impl: str | None) -> torch.nn.Module:
        """open_clip's loss for this family and ``model``, sized for this process group."""
        return self.loss_class(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                               rank=rank, world_size=world_size)

    def outputs(self, model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor,
                image_features: torch.Tensor, image_tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """open_clip's output dict from the tower's normalised features (and tokens) of the kept patches."""
        outputs = {
            "image_features": image_features,
            "text_features": model.encode_text(text, normalize=True),
            "logit_scale": model.logit_scale.exp(),
        }
        if model.logit_bias is not None:
            outputs["logit_bias"] = model.logit_bias
        return outputs

    def loss_terms(self, loss_fn: torch.nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss's named terms for an output dict."""
        return loss_fn(outputs["image_features"], outputs["text_features"], outputs["logit_scale"], output_dict=True)

    def losses(self, loss_fn: torch.nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named loss terms plus their sum under ``loss``."""
        terms = self.loss_terms(loss_fn, outputs)
        return {"loss": sum(terms.values()), **terms}


@FAMILIES.register("coca")
class CoCa(ModelFamily):
    """Contrastive + captioning; the text decoder cross-attends to the tokens the tower made from the kept patches."""

    loss_class = CoCaLoss
    logged_terms = ("contrastive_loss", "caption_loss")

    @classmethod
    def describes(cls, model_cfg: dict[str, Any]) -> bool:
        return "multimodal_cfg" in model_cfg

    def build_loss(self, model, *, rank, world_size, local_loss, gather_with_grad, caption_loss_weight,
                   clip_loss_weight, siglip_dist_impl) -> torch.nn.Module:
        return CoCaLoss(caption_loss_weight=caption_loss_weight, clip_loss_weight=clip_loss_weight, pad_id=model.pad_id,
                        local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True, rank=rank,
                        world_size=world_size)

    def outputs(self, model, image, text, image_features, image_tokens):
        return model(image, text, image_latent=image_features, image_embs=image_tokens)

    def loss_terms(self, loss_fn, outputs):
        return loss_fn(outputs["image_features"], outputs["text_features"], outputs["logits"], outputs["labels"],
                       outputs["logit_scale"], output_dict=True)


@FAMILIES.register("siglip")
class SigLIP(ModelFamily):
    """Sigmoid loss with a learned bias (Zhai et al. 2023)."""

    loss_class = SigLipLoss
    # SigLIP's initial temperature and bias, as open_clip's --siglip sets them on a CLIP config.
    init_from_clip = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}

    @classmethod
    def describes(cls, model_cfg: dict[str, Any]) -> bool:
        return "multimodal_cfg" not in model_cfg and model_cfg.get("init_logit_bias") is not None

    def build_loss(self, model, *, rank, world_size, local_loss, gather_with_grad, caption_loss_weight,
                   clip_loss_weight, siglip_dist_impl) -> torch.nn.Module:
        return SigLipLoss(rank=rank, world_size=world_size, dist_impl=siglip_dist_impl)

    def loss_terms(self, loss_fn, outputs):
        return loss_fn(outputs["image_features"], outputs["text_features"], outputs["logit_scale"],
                       outputs["logit_bias"], output_dict=True)


@FAMILIES.register("clip")
class CLIP(ModelFamily):
    """InfoNCE over the batch (Radford et al. 2021): every config that is not another family's."""

    loss_class = ClipLoss

    @classmethod
    def describes(cls, model_cfg: dict[str, Any]) -> bool:
        return not any(FAMILIES.get(name).describes(model_cfg) for name in FAMILIES if name != "clip")


def family_of(model_cfg: dict[str, Any]) -> str:
    """The name of the family an open_clip model config describes."""
    return next(name for name in FAMILIES if FAMILIES.get(name).describes(model_cfg))


def family_model_kwargs(
    loss: str | None, model_cfg: dict[str, Any], overrides: dict[str, Any]
) -> tuple[ModelFamily, dict[str, Any]]:
    """The family to train and the model constructor kwargs: the user's overrides over the family's init.

    A CLIP config trained as another family gets that family's ``init_from_clip`` (SigLIP: logit scale and bias).
    """
    name = loss or family_of({**model_cfg, **overrides})
    family = FAMILIES.build(name)
    defaults = family.init_from_clip if family_of(model_cfg) == "clip" else {}
    kwargs = {**defaults, **overrides}
    if family_of({**model_cfg, **kwargs}) != name:
        raise ConfigError(
            f"model.init_args.loss: {name!r} does not fit this {family_of(model_cfg)} model config "
            "(coca needs a model_config with multimodal_cfg; a config with init_logit_bias trains with siglip)"
        )
    return family, kwargs


def compute_losses(loss_fn: torch.nn.Module, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named loss terms for an open_clip output dict (the family is the one whose loss ``loss_fn`` is), plus ``loss``."""
    family = next(FAMILIES.build(n) for n in FAMILIES if type(loss_fn) is FAMILIES.get(n).loss_class)
    return family.losses(loss_fn, outputs)
