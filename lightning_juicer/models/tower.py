"""The variable-token image tower: open_clip's own ViT forward, run on the kept patches only.

open_clip's ``VisionTransformer`` embeds every patch, adds the position embeddings to CLS and the
patches, then passes the tokens through its ``patch_dropout`` stage before the pre-norm and the
transformer. ``KeptPatches`` takes that stage's place: it keeps CLS and the patches named by the
batch's ``keep``, so each kept patch carries its own grid cell's position embedding and the
transformer runs on ``1 + k`` tokens. Everything else is open_clip's code (embedding, pooling,
projection); with ``keep`` None the tower is exactly open_clip's model, so checkpoints move in and
out unchanged.

A model config with ``vision_cfg.patch_dropout`` > 0 is refused: the kept patches are the dropout
(``data.init_args.selection: random`` at ``keep_ratio`` 1 - p is FLIP's random masking).
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from lightning_juicer.errors import ConfigError


class KeptPatches(nn.Module):
    """Stands in for the ViT's ``patch_dropout``: tokens [B, 1 + m, D] -> CLS + the ``keep`` patches [B, 1 + k, D]."""

    def __init__(self) -> None:
        super().__init__()
        self.keep: torch.Tensor | None = None  # set by encode_kept for one forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is None:
            return x
        patches = x[:, 1:].gather(1, self.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :1], patches], dim=1)


def check_variable_token_tower(visual: nn.Module) -> VisionTransformer:
    """The model's image tower made to run on a subset of patches (an open_clip ViT without patch dropout)."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"model.init_args.model_name: image tower {type(visual).__name__} cannot drop patches; "
            "use an open_clip ViT model (e.g. ViT-B-16)"
        )
    if not isinstance(visual.patch_dropout, (nn.Identity, KeptPatches)):
        raise ConfigError("model.init_args.model_config.vision_cfg.patch_dropout: the tower already runs on the kept "
                          "patches only; set it to 0 and use data.init_args.selection random with keep_ratio 1 - p")
    if not isinstance(visual.patch_dropout, KeptPatches):
        visual.patch_dropout = KeptPatches()
    return visual


def encode_kept(
    visual: VisionTransformer, image: torch.Tensor, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled image embedding [B, E] and output tokens of the kept patches (open_clip's forward on kept tokens only)."""
    stage = check_variable_token_tower(visual).patch_dropout
    output_tokens = visual.output_tokens
    stage.keep, visual.output_tokens = keep, True
    try:
        pooled, tokens = visual(image)
    finally:
        stage.keep, visual.output_tokens = None, output_tokens
    return pooled, tokens
