"""Train the offline default governor: a small timm ViT on synthetic shape scenes, shipped in the package.

The governor (``SYNTHETIC_GOVERNOR``: ViT, 64 px images, 8 px patches so its 8x8 grid is the
quickstart student's, width 96, depth 4, 4 heads, MLP ratio 2, 0.33 M parameters, 1.3 MB) is trained
from scratch on two CPU cores in about 8 minutes (``preprocess/train_governor.py``) with three losses:

* **class head** (Eq. 4's Γ_pred): multi-label, one sigmoid per ``SHAPE_CLASSES`` entry, binary
  cross-entropy against the shapes present (1-3 objects per scene). Evidence therefore uses
  ``activation="sigmoid"`` (recorded as ``"activation"`` in the folder's ``config.json``; see
  ``governor.loading.governor_activation``).
* **patch scores** (Eq. 2): the last block's CLS-query / patch-key scores, computed with
  ``cls_patch_scores`` on that block's pre-normed input exactly as ``PatchScorer`` does but with
  gradients, are trained to rank object patches first: binary cross-entropy of ``a * s + b``
  (a, b learned scalars, not exported) against each patch's object-pixel fraction from the
  generator's masks. The CLS token then attends to the objects, which also helps the head.
* **patch classes** (auxiliary, "token labelling"): a linear head on the final patch tokens, not
  exported, predicts each patch's class mix (12 shapes + background, soft cross-entropy against the
  per-class pixel fractions). This dense signal is what makes shape features learnable in a few
  thousand steps; without it the CLS head barely leaves its prior in the CPU budget.

Two initialisations speed up the start (both only set starting values; the model is the standard
timm ``VisionTransformer`` and everything stays trainable): 2-D sine-cosine position embeddings and
mimetic attention initialisation (Trockman & Kolter, 2023), which together make attention local at
first, as in a convolution.

Scenes are rendered in memory (``render_scenes`` with the ``TRAIN_STREAM`` random stream, disjoint
from the evaluation and validation streams and from the synthetic dataset's), once, into a pool that
is sampled with horizontal flips (every shape class is mirror-invariant). Images are normalised with
open_clip's OpenAI mean / std, the student's own, so prepared batches feed the governor as they are.

The export is a ``timm.models.save_for_hf`` folder (``config.json`` + ``model.safetensors``) that
``load_governor(path)`` loads; ``config.json`` also holds ``label_names`` (read by
``ClassHead.from_model``), ``activation`` and a ``training`` record with the settings and the
quality figures of ``governor_quality`` on held-out scenes.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from timm.models import VisionTransformer, save_for_hf
from torch import nn

from lightning_juicer.synthetic import SHAPE_CLASSES
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.quality import (
    TRAIN_STREAM,
    VAL_STREAM,
    Scenes,
    governor_quality,
    render_scenes,
    to_tensor,
)
from lightning_juicer.governor.scoring import PatchScorer, timm_forward
from lightning_juicer.optim import param_groups, warmup_cosine

SYNTHETIC_GOVERNOR = Path(__file__).parent.parent / "assets" / "governor-synthetic"
ACTIVATION = "sigmoid"
ARCHITECTURE = "vit_tiny_patch16_224"  # the timm factory; every size argument is overridden below
MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)
STD = tuple(open_clip.OPENAI_DATASET_STD)
VIT_NO_DECAY = ("cls_token", "pos_embed", "reg_token")  # timm ViT parameters kept free of weight decay


@dataclass
class GovernorTrainConfig:
    """Settings of ``train_governor`` (also the flags of preprocess/train_governor.py)."""

    out: str = str(SYNTHETIC_GOVERNOR)
    seed: int = 0
    steps: int = 2400
    batch_size: int = 64
    pool_size: int = 16_000
    lr: float = 3e-3
    min_lr: float = 2e-5
    weight_decay: float = 0.05
    beta2: float = 0.99
    warmup_steps: int = 100
    image_size: int = 64
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    pos_init: str = "sincos"  # or "learn": timm's own initialisation
    attn_init: str = "mimetic"  # or "default": timm's own initialisation
    cls_loss_weight: float = 1.0
    patch_loss_weight: float = 1.0
    token_loss_weight: float = 1.0
    threads: int = 2
    workers: int = 2
    log_every: int = 50
    val_every: int = 0
    val_images: int = 256
    eval_images: int = 1000
    eval_seed: int = 0


def build_governor(cfg: GovernorTrainConfig) -> VisionTransformer:
    """A randomly initialised governor ViT with a 12-way multi-label head and the export metadata."""
    overlay = dict(
        tag="synthetic",
        mean=MEAN,
        std=STD,
        interpolation="bicubic",
        crop_pct=1.0,
        num_classes=len(SHAPE_CLASSES),
        label_names=tuple(SHAPE_CLASSES),
        license="apache-2.0",
        description="lightning_juicer offline default governor, trained on synthetic shape scenes",
    )
    return timm.create_model(
        ARCHITECTURE,
        pretrained=False,
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        num_classes=len(SHAPE_CLASSES),
        class_token=True,
        global_pool="token",
        pretrained_cfg_overlay=overlay,
    )


def sincos_pos_embed(grid: tuple[int, int], dim: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [1, prefix + gh * gw, dim] (MAE style; zeros for prefix tokens)."""
    gh, gw = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    emb = F.pad(emb, (0, dim - emb.shape[1]))
    return torch.cat([torch.zeros(num_prefix_tokens, dim), emb])[None]


def _factor(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A [d, rank], B [d, rank] with A @ B.T the best rank-r approximation of the square matrix m."""
    u, s, vh = torch.linalg.svd(m)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


@torch.no_grad()
def mimetic_init(model: VisionTransformer, generator: torch.Generator, alpha_qk: float = 0.7, beta_qk: float = 0.7,
                 alpha_vo: float = 0.4, beta_vo: float = 0.4) -> None:
    """Mimetic initialisation of every attention layer (Trockman & Kolter, 2023).

    Per head, ``W_q^T W_k ~ alpha Z + beta I`` (so, with 2-D sine-cosine position embeddings, attention
    starts out local) and, per layer, ``W_v^T W_proj^T ~ alpha Z - beta I``, Z ~ N(0, 1/d). Only the
    starting point changes: the architecture is the standard timm ViT.
    """
    for block in model.blocks:
        attn = block.attn
        dim, heads = attn.qkv.in_features, attn.num_heads
        head_dim = dim // heads
        wq, wk = [], []
        for _ in range(heads):
            z = torch.randn(dim, dim, generator=generator) / dim**0.5
            a, b = _factor(alpha_qk * z + beta_qk * torch.eye(dim), head_dim)
            wq.append(a.T)
            wk.append(b.T)
        attn.qkv.weight[:dim] = torch.cat(wq)
        attn.qkv.weight[dim : 2 * dim] = torch.cat(wk)
        z = torch.randn(dim, dim, generator=generator) / dim**0.5
        a, b = _factor(alpha_vo * z - beta_vo * torch.eye(dim), dim)
        attn.qkv.weight[2 * dim :] = a.T
        attn.proj.weight.copy_(b)
        if attn.qkv.bias is not None:
            attn.qkv.bias.zero_()
        attn.proj.bias.zero_()


def forward_with_scores(
    model: VisionTransformer, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class logits [B, C], Eq. 2 patch scores [B, m] (``PatchScorer``'s computation) and the final normed
    patch tokens [B, m, D], with gradients."""
    out = timm_forward(model, images, model.num_prefix_tokens)
    return model.head(out.cls), out.scores, out.patches


def _render_chunk(args: tuple[int, int, int, int, int, int]) -> Scenes:
    start, stop, stream, seed, image_size, patch_size = args
    return render_scenes(range(start, stop), stream, seed, image_size, patch_size)


def render_pool(count: int, stream: int, seed: int, image_size: int, patch_size: int, workers: int = 1) -> Scenes:
    """``render_scenes(range(count), ...)``, split over ``workers`` processes (same result for any count)."""
    chunk = 500
    jobs = [(s, min(s + chunk, count), stream, seed, image_size, patch_size) for s in range(0, count, chunk)]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    return Scenes(*(np.concatenate([getattr(p, f) for p in parts]) for f in Scenes._fields[:-1]), parts[0].grid)


def scorer_and_head(model: VisionTransformer) -> tuple[PatchScorer, ClassHead]:
    """A frozen ``PatchScorer`` and sigmoid ``ClassHead`` on a copy of the (training) model."""
    frozen = copy.deepcopy(model)
    return PatchScorer(frozen), ClassHead.from_model(frozen, activation=ACTIVATION)


def train_governor(cfg: GovernorTrainConfig, log=print) -> tuple[VisionTransformer, dict]:
    """Train the governor with ``cfg.threads`` CPU threads; returns the model (eval mode) and a record of the run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: GovernorTrainConfig, log) -> tuple[VisionTransformer, dict]:
    if cfg.pos_init not in ("sincos", "learn") or cfg.attn_init not in ("mimetic", "default"):
        raise ValueError(
            f"pos_init must be sincos|learn and attn_init mimetic|default, got {cfg.pos_init!r}, {cfg.attn_init!r}"
        )
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    pool = render_pool(cfg.pool_size, TRAIN_STREAM, cfg.seed, cfg.image_size, cfg.patch_size, cfg.workers)
    render_s = time.perf_counter() - start
    log(f"rendered {cfg.pool_size} training scenes in {render_s:.1f}s")
    images = torch.from_numpy(pool.images)
    labels = torch.from_numpy(pool.labels)
    gh, gw = pool.grid
    fraction = torch.from_numpy(pool.patch_fraction).view(-1, gh, gw)
    class_fraction = torch.from_numpy(pool.patch_class_fraction).view(-1, gh, gw, len(SHAPE_CLASSES))

    model = build_governor(cfg).train()
    if cfg.pos_init == "sincos":  # a starting point only: the embedding is still learned
        with torch.no_grad():
            model.pos_embed.copy_(sincos_pos_embed(pool.grid, model.embed_dim, model.pos_embed.shape[1] - gh * gw))
    if cfg.attn_init == "mimetic":
        mimetic_init(model, torch.Generator().manual_seed(cfg.seed))
    affine = nn.Parameter(torch.tensor([1.0, 0.0]))  # score scale and offset of the patch loss
    # per-patch class head (not exported): 12 shapes + background, soft targets from the masks
    token_head = nn.Linear(model.embed_dim, len(SHAPE_CLASSES) + 1)
    groups = param_groups([model, token_head], cfg.weight_decay, no_decay_names=VIT_NO_DECAY)
    groups[1]["params"].append(affine)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))
    schedule = warmup_cosine(cfg.warmup_steps, cfg.steps, cfg.min_lr / cfg.lr if cfg.lr else 0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    running = {"cls": 0.0, "patch": 0.0, "token": 0.0, "n": 0}
    train_start = time.perf_counter()
    for step in range(cfg.steps):
        lr = cfg.lr * schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
        x = images[idx]
        frac, cfrac = fraction[idx], class_fraction[idx].float()
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        frac = torch.where(flip.view(-1, 1, 1), frac.flip(2), frac).flatten(1)
        cfrac = torch.where(flip.view(-1, 1, 1, 1), cfrac.flip(2), cfrac).flatten(1, 2)
        x = to_tensor(x.numpy(), MEAN, STD)

        logits, scores, tokens = forward_with_scores(model, x)
        loss_cls = F.binary_cross_entropy_with_logits(logits, labels[idx])
        loss_patch = F.binary_cross_entropy_with_logits(affine[0] * scores + affine[1], frac)
        loss = cfg.cls_loss_weight * loss_cls + cfg.patch_loss_weight * loss_patch
        if cfg.token_loss_weight:
            target = torch.cat([cfrac, (1.0 - cfrac.sum(-1, keepdim=True)).clamp_min(0.0)], dim=-1)
            loss_token = F.cross_entropy(token_head(tokens).flatten(0, 1), target.flatten(0, 1))
            loss = loss + cfg.token_loss_weight * loss_token
            running["token"] += loss_token.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        running["cls"] += loss_cls.item()
        running["patch"] += loss_patch.item()
        running["n"] += 1
        done = step + 1
        if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
            n = running["n"]
            entry = {
                "step": done,
                "loss_cls": running["cls"] / n,
                "loss_patch": running["patch"] / n,
                "loss_token": running["token"] / n,
                "lr": lr,
                "elapsed_s": time.perf_counter() - train_start,
            }
            running = {"cls": 0.0, "patch": 0.0, "token": 0.0, "n": 0}
            if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.steps):
                scorer, head = scorer_and_head(model)
                q = governor_quality(scorer, head, cfg.val_images, cfg.seed, stream=VAL_STREAM)
                entry.update({f"val_{k}": q[k] for k in ("coverage_topk", "evidence_precision", "evidence_recall")})
                model.train()
            history.append(entry)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    train_s = time.perf_counter() - train_start
    model.eval()
    record = {
        "config": asdict(cfg),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "final_loss_cls": history[-1]["loss_cls"] if history else None,
        "final_loss_patch": history[-1]["loss_patch"] if history else None,
    }
    return model, record


def save_governor(model: VisionTransformer, out: str | Path, record: dict | None = None) -> Path:
    """Write the governor folder (``config.json`` + ``model.safetensors``) that ``load_governor`` loads."""
    out = Path(out)
    model_config = {
        "label_names": list(SHAPE_CLASSES),
        "activation": ACTIVATION,
        "training": record or {},
    }
    save_for_hf(model, out, model_config=model_config, safe_serialization=True)
    for file in (out / "config.json", out / "model.safetensors"):
        file.chmod(0o644)  # safetensors writes owner-only files
    return out
