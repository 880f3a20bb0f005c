"""The variable-token image tower: an open_clip ViT that runs on the kept patches only.

Patch embedding covers the whole image, then each kept patch gets its own grid cell's
position embedding, the CLS token is always kept, and the transformer runs on the
``1 + k`` kept tokens. With every patch kept in grid order this is exactly open_clip's
``VisionTransformer.forward`` on the same weights, so checkpoints move in and out unchanged.
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer

from lightning_juicer.errors import ConfigError


def check_variable_token_tower(visual: torch.nn.Module) -> VisionTransformer:
    """The model's image tower, if it can run on a subset of patches (an open_clip ViT)."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"model.init_args.model_name: image tower {type(visual).__name__} cannot drop patches; "
            "use an open_clip ViT model (e.g. ViT-B-16)"
        )
    return visual


def embed_kept_tokens(visual: VisionTransformer, image: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Tokens entering the transformer: CLS plus the kept patches, each with its own position embedding."""
    x = visual.conv1(image).flatten(2).transpose(1, 2)  # [B, m, D], row-major grid order
    pos = visual.positional_embedding.to(x.dtype)
    x = x + pos[1:]
    if keep is not None:
        x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)
    return visual.ln_pre(torch.cat([cls, x], dim=1))


def encode_kept(
    visual: VisionTransformer, image: torch.Tensor, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled image embedding [B, E] and output tokens of the kept patches, transformer on kept tokens only."""
    x = visual.transformer(embed_kept_tokens(visual, image, keep))
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled, tokens
