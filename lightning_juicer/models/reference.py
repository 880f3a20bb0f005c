"""A reference CLIP: an open_clip model (name + pretrained tag or weights file, ``local-dir:<folder>``) or the
CLIP inside a ``.ckpt`` trained by this project, frozen, with the preprocessing and temperature it was trained with.

The embeddings pass embeds images and captions with it (for the sample-level sieves: negCLIPLoss needs
its temperature). A checkpoint is read with ``weights_only=True`` and its model built from its
hyper-parameters; open_clip weights come from the local cache only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import open_clip
import torch

from lightning_juicer.io.sidecar import governor_id
from lightning_juicer.models.checkpoint import load_lightning_checkpoint
from lightning_juicer.models.export import module_from_checkpoint
from lightning_juicer.models.factory import create_clip_model

KEY = "reference.name"


@dataclass
class ReferenceSettings:
    """The reference model.

    Args:
        name: an open_clip name (ViT-B-16), local-dir:<folder>, or a .ckpt trained by lightning_juicer; null: none.
        pretrained: an open_clip tag (local cache only) or a weights file; ignored for a .ckpt.
    """

    name: str | None = None
    pretrained: str | None = None


class Reference(NamedTuple):
    """A loaded reference CLIP: canonical name, model, tokenizer, preprocessing and temperature."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    temperature: float


def load_reference(settings: ReferenceSettings) -> Reference:
    """The open_clip model by name / local-dir, or the CLIP inside a ``.ckpt`` of this project, frozen."""
    name = str(settings.name)
    if name.endswith(".ckpt"):
        module = module_from_checkpoint(load_lightning_checkpoint(name, KEY), KEY)
        model, tokenizer = module.model, module.tokenizer
    else:
        model = create_clip_model(name, None, settings.pretrained or None)
        tokenizer = open_clip.get_tokenizer(name)
    visual = model.visual
    pp = getattr(visual, "preprocess_cfg", {}) or {}
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    return Reference(
        governor_id(name),
        model.eval().requires_grad_(False),
        tokenizer,
        (int(size[0]), int(size[1])),
        tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        str(pp.get("interpolation", "bicubic")),
        float(1.0 / model.logit_scale.exp().item()),
    )
