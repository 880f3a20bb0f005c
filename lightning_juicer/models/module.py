"""JuicerCLIP: the LightningModule training an open_clip CLIP on kept patches with the ITC loss."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from lightning_juicer.data.spec import DataSpec
from lightning_juicer.errors import ConfigError
from lightning_juicer.models.factory import create_clip_model
from lightning_juicer.models.guards import NONFINITE_POLICIES, guard_loss
from lightning_juicer.models.optim import param_groups, warmup_cosine
from lightning_juicer.models.tower import check_variable_token_tower, encode_kept
from lightning_juicer.models.vision_init import warm_start_visual


class JuicerCLIP(L.LightningModule):
    """CLIP trained contrastively on the patches kept by the data pipeline.

    Args:
        model_name: open_clip model name (``ViT-B-16``), ``local-dir:/path`` or ``hf-hub:org/repo``.
        model_config: inline open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``);
            registered under ``model_name``, so a tiny model is only a config.
        pretrained: open_clip pretrained tag (from the local cache) or a checkpoint file; None = random init.
        vision_init: warm-start the image tower from a timm ViT of the same shape (a governor name or folder
            as ``data.init_args.governor.name`` takes, e.g. ``juicer-synthetic``); the CLIP projection and the
            text tower stay random. None = no warm start.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay on matrices (not on norms, biases, embeddings, logit scale).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        local_loss: compute the ITC loss for local rows against gathered features (open_clip's --local-loss).
        gather_with_grad: back-propagate through the feature all-gather (open_clip's --gather-with-grad).
        max_logit_scale: the learned temperature's exp is clamped to this after every step.
        grad_checkpointing: activation checkpointing in both towers.
        nonfinite_loss: a NaN/inf training loss stops the run naming the step and the batch keys (``raise``),
            or the batch is skipped and its samples counted as ``nonfinite_loss`` drops (``skip``).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        vision_init: str | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 2000,
        min_lr_ratio: float = 0.0,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        max_logit_scale: float = 100.0,
        grad_checkpointing: bool = False,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__()
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ConfigError(f"model.init_args.nonfinite_loss: {nonfinite_loss!r} is not one of {NONFINITE_POLICIES}")
        if vision_init and pretrained:
            raise ConfigError("model.init_args.vision_init: set either model.init_args.pretrained or vision_init, not both")
        self.save_hyperparameters()
        self.model = create_clip_model(model_name, model_config, pretrained)
        check_variable_token_tower(self.model.visual)
        if vision_init:
            warm_start_visual(self.model.visual, vision_init)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.train_loss = ClipLoss()
        self.eval_loss = ClipLoss()

    def data_spec(self) -> DataSpec:
        """Image size, patch size, normalisation and tokenizer the data pipeline must use."""
        visual = self.model.visual
        cfg = visual.preprocess_cfg
        return DataSpec(
            image_size=visual.image_size[0],
            patch_size=visual.patch_size[0],
            tokenizer=self.tokenizer,
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=cfg["interpolation"],
            resize_mode=cfg["resize_mode"],
        )

    def encode_image(self, image: torch.Tensor, keep: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """Image embeddings from the kept patches (all patches when ``keep`` is None)."""
        features, _ = encode_kept(self.model.visual, image, keep)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings of tokenized captions."""
        return self.model.encode_text(text, normalize=normalize)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and the logit scale exp(t) for a contract batch."""
        image_features = self.encode_image(batch["image"], batch.get("keep"))
        text_features = self.encode_text(batch["text"])
        return image_features, text_features, self.model.logit_scale.exp()

    def setup(self, stage: str) -> None:
        """Size the ITC loss for this process group (features are gathered across ranks)."""
        self.train_loss = ClipLoss(
            local_loss=self.hparams.local_loss,
            gather_with_grad=self.hparams.gather_with_grad,
            cache_labels=True,
            rank=self.global_rank,
            world_size=self.trainer.world_size if self.trainer else 1,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """ITC loss on the kept patches (None skips a non-finite batch under ``nonfinite_loss: skip``)."""
        image_features, text_features, logit_scale = self(batch)
        loss = guard_loss(self, self.train_loss(image_features, text_features, logit_scale), batch,
                          self.hparams.nonfinite_loss)
        if loss is None:
            return None
        batch_size = batch["text"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", logit_scale, batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Clamp the temperature as CLIP does: exp(logit_scale) <= max_logit_scale."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    def _eval_step(self, batch: dict, prefix: str) -> None:
        image_features, text_features, logit_scale = self(batch)
        loss = self.eval_loss(image_features, text_features, logit_scale)
        hits = (image_features @ text_features.T).argmax(dim=1) == torch.arange(len(image_features), device=self.device)
        batch_size = batch["text"].shape[0]
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/batch_i2t_top1", hits.float().mean(), sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Contrastive loss and in-batch image->text top-1 on held-out pairs."""
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Same as validation, logged under ``test/``."""
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        """AdamW (no decay on 1-d params and embeddings) with per-step warm-up + cosine."""
        hp = self.hparams
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(min(hp.warmup_steps, max(total - 1, 1)), total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
