"""Governor patch scoring (Eq. 2): how strongly the CLS token attends to each patch in the last layer.

``s = (v_c W_Q)(V W_K)^T / sqrt(d_k)``, with ``v_c`` the CLS token and ``V`` the m patch tokens as
they enter the last block's attention (after its pre-norm), ``W_Q`` / ``W_K`` that block's own query
and key projections (bias, per-head q/k norm and rotary embedding applied as the block does), one
score per head, averaged over heads. Only the CLS query row is formed: no attention map is built.
The same forward pass yields the governor's CLS embedding (the pooled, normed feature its head uses).

Supported governors:

* timm ``VisionTransformer`` with a class token (DINO, DINOv2 with or without register tokens,
  supervised / CLIP ViTs, qk-norm variants) and timm ``Eva`` with a class token (EVA, EVA02,
  DINOv3), including separate or fused q/k/v, EVA's q/v-only bias and rotary position embeddings
  (applied to patch keys exactly as ``EvaAttention`` does; prefix tokens are not rotated).
* open_clip ``VisionTransformer`` image towers (or a CLIP model holding one as ``.visual``), with
  ``nn.MultiheadAttention`` or open_clip's custom attention (qk-norm); the CLS embedding is the
  tower's output (after ``ln_post`` and ``proj``), i.e. what a zero-shot head compares to text.

Refused with a ``ConfigError``: models without a class token, post-norm or parallel blocks,
differential / grouped-query attention, scaled-cosine attention and timm-trunk open_clip towers.
"""

from __future__ import annotations

from typing import NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import Attention as OpenClipAttention
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.data import resolve_model_data_config
from timm.layers import Attention as TimmAttention
from timm.layers import AttentionRope, apply_rot_embed_cat
from timm.models import Eva, VisionTransformer
from timm.models.eva import EvaAttention, EvaBlock
from timm.models.vision_transformer import Block
from torch import nn

from lightning_juicer.errors import ConfigError

KEY = "governor.name"


class ScoreOutput(NamedTuple):
    """Patch scores [B, m] (float32, row-major grid order), CLS embedding [B, D], the grid (rows, cols), and the
    last layer's patch tokens [B, m, W] (after the final norm; Cluster* clusters them)."""

    scores: torch.Tensor
    cls: torch.Tensor
    grid: tuple[int, int]
    patches: torch.Tensor | None = None


class QKProjection(NamedTuple):
    """The query and key halves of an attention layer's input projection, split per head."""

    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    k_weight: torch.Tensor
    k_bias: torch.Tensor | None
    num_heads: int
    head_dim: int
    q_norm: nn.Module
    k_norm: nn.Module
    rotate_half: bool


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"{KEY}: {what}; use a timm ViT / EVA with a class token or an open_clip ViT image tower")


def qk_projection(attn: nn.Module) -> QKProjection:
    """Query / key weights, biases, head layout and q/k norms of a supported attention module."""
    identity = nn.Identity()
    if isinstance(attn, nn.MultiheadAttention):
        if attn._qkv_same_embed_dim:
            wq, wk, _ = attn.in_proj_weight.chunk(3)
        else:
            wq, wk = attn.q_proj_weight, attn.k_proj_weight
        bq, bk = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3)[:2]
        return QKProjection(wq, bq, wk, bk, attn.num_heads, attn.head_dim, identity, identity, False)
    if isinstance(attn, OpenClipAttention):
        if attn.logit_scale is not None:
            raise _refuse("scaled-cosine attention is not supported")
        wq, wk, _ = attn.in_proj_weight.chunk(3)
        bq, bk = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.chunk(3)[:2]
        return QKProjection(wq, bq, wk, bk, attn.num_heads, attn.head_dim, attn.ln_q, attn.ln_k, False)
    if isinstance(attn, (TimmAttention, EvaAttention, AttentionRope)):
        if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
            raise _refuse("grouped-query attention is not supported")
        if getattr(attn, "qkv", None) is not None:
            wq, wk, _ = attn.qkv.weight.chunk(3)
            bias = attn.qkv.bias
            if bias is None and getattr(attn, "q_bias", None) is not None:
                bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            bq, bk = (None, None) if bias is None else bias.chunk(3)[:2]
        else:
            wq, bq, wk, bk = attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias
        rotate_half = bool(getattr(attn, "rotate_half", False))
        return QKProjection(wq, bq, wk, bk, attn.num_heads, attn.head_dim, attn.q_norm, attn.k_norm, rotate_half)
    raise _refuse(f"attention layer {type(attn).__name__} is not supported")


def cls_patch_scores(
    qk: QKProjection, x: torch.Tensor, num_prefix_tokens: int, rope: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 2 scores [B, m] of the CLS query (token 0) against the patch keys of pre-normed tokens x [B, N, D]."""
    batch, heads, head_dim = x.shape[0], qk.num_heads, qk.head_dim
    q = F.linear(x[:, 0], qk.q_weight, qk.q_bias).view(batch, heads, 1, head_dim)
    k = F.linear(x[:, num_prefix_tokens:], qk.k_weight, qk.k_bias)
    k = k.view(batch, -1, heads, head_dim).transpose(1, 2)
    q, k = qk.q_norm(q), qk.k_norm(k)
    if rope is not None:
        k = apply_rot_embed_cat(k, rope, half=qk.rotate_half)
    scores = (q.float() @ k.float().transpose(-2, -1)).squeeze(2) * head_dim**-0.5
    return scores.mean(dim=1)


def _check_timm(model: nn.Module) -> None:
    if model.cls_token is None:
        raise _refuse(f"{type(model).__name__} has no class token")
    last = model.blocks[-1]
    if type(last) not in (Block, EvaBlock):
        raise _refuse(f"last block {type(last).__name__} is not a pre-norm attention block")
    qk_projection(last.attn)


def _check_open_clip(visual: OpenClipVisionTransformer) -> None:
    last = visual.transformer.resblocks[-1]
    if not hasattr(last, "ln_1"):
        raise _refuse(f"last block {type(last).__name__} is not a pre-norm attention block")
    qk_projection(last.attn)


def timm_forward(model: nn.Module, images: torch.Tensor, num_prefix_tokens: int) -> ScoreOutput:
    """Eq. 2 scores of a timm ViT / EVA in one forward pass (with gradients unless the caller disables them):
    the last block's CLS-query / patch-key scores, the pooled CLS embedding (before the classifier) and the
    final normed patch tokens. ``PatchScorer`` calls it under ``no_grad``; the governor trainer with gradients."""
    is_eva = isinstance(model, Eva)
    x = model.patch_embed(images)
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(model.patch_embed.grid_size)
    rope = None
    if is_eva:
        x, rope = model._pos_embed(x)
    else:
        x = model.patch_drop(model._pos_embed(x))
    x = model.norm_pre(x)
    mixed = rope is not None and getattr(model, "rope_mixed", False)
    ropes = list(rope) if mixed else [rope] * len(model.blocks)
    for block, block_rope in zip(model.blocks[:-1], ropes):
        x = block(x, rope=block_rope) if is_eva else block(x)
    last = model.blocks[-1]
    scores = cls_patch_scores(qk_projection(last.attn), last.norm1(x), num_prefix_tokens, ropes[-1])
    x = model.norm(last(x, rope=ropes[-1]) if is_eva else last(x))
    cls = model.forward_head(x, pre_logits=True)
    return ScoreOutput(scores, cls, (int(grid[0]), int(grid[1])), x[:, num_prefix_tokens:])


class PatchScorer(nn.Module):
    """A frozen governor that returns Eq. 2 patch scores and its CLS embedding in one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, (VisionTransformer, Eva, OpenClipVisionTransformer)):
            model = getattr(model, "visual", model)
        if isinstance(model, (VisionTransformer, Eva)):
            self.family = "timm"
            _check_timm(model)
            cfg = resolve_model_data_config(model)
            self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
            self.interpolation = str(cfg.get("interpolation", "bicubic"))
            self.image_size = tuple(model.patch_embed.img_size)
            self.patch_size = tuple(model.patch_embed.patch_size)
            self.num_prefix_tokens = int(model.num_prefix_tokens)
            self.embed_dim = int(model.num_features)
        elif isinstance(model, OpenClipVisionTransformer):
            self.family = "open_clip"
            _check_open_clip(model)
            pp = getattr(model, "preprocess_cfg", {}) or {}
            self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
            self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
            self.interpolation = str(pp.get("interpolation", "bicubic"))
            self.image_size = tuple(model.image_size)
            self.patch_size = tuple(model.patch_size)
            self.num_prefix_tokens = 1
            self.embed_dim = int(model.output_dim if model.proj is not None else model.ln_post.normalized_shape[0])
        else:
            raise _refuse(f"{type(model).__name__} is not a supported governor")
        self.model = model.eval().requires_grad_(False)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at the governor's native image size."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        """Patches per image at the native image size, m."""
        return self.grid[0] * self.grid[1]

    def train(self, mode: bool = True) -> PatchScorer:
        """Keep the governor in eval mode whatever the surrounding module does."""
        return super().train(False)

    def prepare(
        self, images: torch.Tensor, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
    ) -> torch.Tensor:
        """Images normalised with (mean, std) re-normalised for the governor and resized to its image size."""
        if mean is not None and std is not None:
            src_mean, src_std = _stats(mean, images), _stats(std, images)
            images = (images * src_std + src_mean - _stats(self.mean, images)) / _stats(self.std, images)
        if tuple(images.shape[-2:]) != self.image_size and not self._dynamic:
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            images = F.interpolate(images, size=self.image_size, mode=mode, align_corners=False, antialias=True)
        return images

    @property
    def _dynamic(self) -> bool:
        return self.family == "timm" and bool(getattr(self.model, "dynamic_img_size", False))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ScoreOutput:
        """Patch scores [B, m], CLS embedding [B, D] and grid for images in the governor's normalisation."""
        if self.family == "timm":
            return self._forward_timm(images)
        return self._forward_open_clip(images)

    def _forward_timm(self, images: torch.Tensor) -> ScoreOutput:
        return timm_forward(self.model, images, self.num_prefix_tokens)

    def _forward_open_clip(self, images: torch.Tensor) -> ScoreOutput:
        visual = self.model
        grid = (images.shape[-2] // self.patch_size[0], images.shape[-1] // self.patch_size[1])
        batch_first = visual.transformer.batch_first
        x = visual._embeds(images)
        if not batch_first:
            x = x.transpose(0, 1)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        h = last.ln_1(x)
        scores = cls_patch_scores(qk_projection(last.attn), h if batch_first else h.transpose(0, 1), 1)
        x = last(x)
        if not batch_first:
            x = x.transpose(0, 1)
        cls, tokens = visual._pool(x)
        if visual.proj is not None:
            cls = cls @ visual.proj
        return ScoreOutput(scores, cls, grid, tokens)


def _stats(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
