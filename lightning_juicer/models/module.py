"""JuicerCLIP: the LightningModule training an open_clip CLIP, SigLIP or CoCa on kept patches."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning as L
import open_clip
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from lightning_juicer.data.drops import DropLedger
from lightning_juicer.data.spec import DataSpec, OnTheFlySource
from lightning_juicer.errors import ConfigError
from lightning_juicer.models.checkpoint import check_state_dict
from lightning_juicer.models.factory import create_clip_model, resolve_model_config
from lightning_juicer.models.family import family_model_kwargs
from lightning_juicer.models.governed import FrozenGovernor, build_governor, exclude_from_state_dict
from lightning_juicer.models.guards import NONFINITE_POLICIES, LossGuard
from lightning_juicer.optim import param_groups, warmup_cosine
from lightning_juicer.models.phase import FullPatchPhase
from lightning_juicer.models.tower import check_variable_token_tower, encode_kept
from lightning_juicer.models.vision_init import warm_start_visual

log = logging.getLogger(__name__)
DROPS_KEY = "juicer_model_drops"  # the module's drop ledger inside a Lightning checkpoint


class JuicerCLIP(L.LightningModule):
    """A CLIP-family model (CLIP, SigLIP or CoCa) trained on the patches kept by the data pipeline.

    The family follows the open_clip model config (``multimodal_cfg``: CoCa, ``init_logit_bias``: SigLIP,
    else CLIP) unless ``loss`` names it (``models/family.py``); the image tower always runs on the kept
    patches only, and CoCa's text decoder cross-attends to the tokens the tower made from them.

    With on-the-fly selection (the DataModule's ``on_the_fly_selection``) the module holds the frozen
    governor (``models/governed.py``): built in ``setup``, placed and cast by Lightning with the model,
    run inside ``training_step`` under the trainer's precision, never trained nor checkpointed.
    The training step writes the ``keep`` it trained on into the batch (callbacks read it at batch end).

    Args:
        model_name: open_clip model name (``ViT-B-16``), ``local-dir:/path`` or ``hf-hub:org/repo``.
        model_config: inline open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, for CoCa
            ``multimodal_cfg``); registered under ``model_name``, so a tiny model is only a config.
        pretrained: open_clip pretrained tag (from the local cache) or a checkpoint file; None = random init.
        vision_init: warm-start the image tower from a timm ViT of the same shape (a governor name or folder
            as ``data.init_args.governor.name`` takes, e.g. ``juicer-synthetic``); the CLIP projection and the
            text tower stay random. None = no warm start.
        loss: a registered model family: ``clip`` (InfoNCE), ``siglip`` (sigmoid) or ``coca`` (contrastive +
            captioning); None = the model config's family. ``siglip`` on a CLIP config adds SigLIP's logit bias (init -10) and
            sets the logit scale init to ln 10, as open_clip's ``--siglip`` does.
        init_logit_scale: override of the model config's initial log temperature.
        init_logit_bias: override of the model config's initial logit bias (SigLIP).
        caption_loss_weight: CoCa captioning loss weight.
        clip_loss_weight: CoCa contrastive loss weight.
        siglip_dist_impl: open_clip's SigLIP exchange across ranks (``bidir``, ``shift``, ``reduce``, ``gather``).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay on matrices (not on norms, biases, embeddings, logit scale).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        local_loss: compute the contrastive loss for local rows against gathered features (open_clip's --local-loss).
        gather_with_grad: back-propagate through the feature all-gather (open_clip's --gather-with-grad).
        max_logit_scale: the learned temperature's exp is clamped to this after every step.
        grad_checkpointing: activation checkpointing in both towers.
        nonfinite_loss: a NaN/inf training loss stops the run naming the step and the batch keys (``raise``),
            or the batch is skipped and its samples counted as ``nonfinite_loss`` drops (``skip``). The skip
            happens on the device (fused AdamW's ``found_inf``); the host reads the flags every
            ``nonfinite_check_every`` steps (models/guards.py), so a ``raise`` comes up to that many steps late.
        nonfinite_check_every: steps between the guard's host checks (each check is one device sync).
        full_patch_steps: full-patch tuning (paper Tab. 5f): the last this many optimizer steps train on all
            patches (the batch's ``keep`` is ignored, the governor does not run); see ``models/phase.py``.
        full_patch_fraction: the phase as a fraction of the run's steps (paper: 0.02 / 0.04 / 0.08); give at most
            one of ``full_patch_steps`` and ``full_patch_fraction``.
        full_patch_lr_multiplier: factor on the warm-up + cosine learning rate during the phase.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        vision_init: str | None = None,
        loss: str | None = None,
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        caption_loss_weight: float = 2.0,
        clip_loss_weight: float = 1.0,
        siglip_dist_impl: Literal["bidir", "shift", "reduce", "gather"] | None = None,
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
        nonfinite_check_every: int = 100,
        full_patch_steps: int | None = None,
        full_patch_fraction: float | None = None,
        full_patch_lr_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        if nonfinite_check_every < 1:
            raise ConfigError(f"model.init_args.nonfinite_check_every: {nonfinite_check_every} must be >= 1")
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ConfigError(f"model.init_args.nonfinite_loss: {nonfinite_loss!r} is not one of {NONFINITE_POLICIES}")
        if vision_init and pretrained:
            raise ConfigError("model.init_args.vision_init: set either model.init_args.pretrained or vision_init, not both")
        self.phase = FullPatchPhase.from_args(full_patch_steps, full_patch_fraction, full_patch_lr_multiplier)
        self.save_hyperparameters()
        overrides = {key: value for key, value in (("init_logit_scale", init_logit_scale),
                                                   ("init_logit_bias", init_logit_bias)) if value is not None}
        self.family, model_kwargs = family_model_kwargs(loss, resolve_model_config(model_name, model_config), overrides)
        self.model = create_clip_model(model_name, model_config, pretrained, **model_kwargs)
        # The exact config this model was built from, for export to open_clip's format.
        self.model_cfg = resolve_model_config(model_name, model_config, **model_kwargs)
        check_variable_token_tower(self.model.visual)
        if vision_init:
            warm_start_visual(self.model.visual, vision_init)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.train_loss = self.build_loss()
        self.eval_loss = self.build_loss()
        self.drops = DropLedger()  # this module's own: skipped non-finite steps, the governor's random fallbacks
        self.guard = LossGuard(nonfinite_loss, nonfinite_check_every, self.drops)
        self.governor: FrozenGovernor | None = None  # set in setup() for on-the-fly selection
        exclude_from_state_dict(self, "governor")
        self._device_fallbacks: torch.Tensor | None = None  # the governor's fallbacks, counted on the device
        self.phase_start: int | None = None  # first step of the full-patch phase, fixed in configure_optimizers
        self._phase_announced = False

    def build_loss(self, rank: int = 0, world_size: int = 1) -> torch.nn.Module:
        """open_clip's loss for this model's family and the hparams, for ``world_size`` ranks."""
        hp = self.hparams
        return self.family.build_loss(
            self.model, rank=rank, world_size=world_size, local_loss=hp.local_loss,
            gather_with_grad=hp.gather_with_grad, caption_loss_weight=hp.caption_loss_weight,
            clip_loss_weight=hp.clip_loss_weight, siglip_dist_impl=hp.siglip_dist_impl,
        )

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

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """open_clip's output dict for a contract batch: normalised features, exp(logit scale), bias, CoCa logits."""
        if batch["image"].dtype == torch.uint8:  # a dtype is host metadata: no sync
            raise ConfigError(
                "batch image: uint8 pixels reached the model (JuicerDataModule's loaders ship them raw); give the "
                "Trainer the DataModule (trainer.fit(model, datamodule=dm)), whose on_after_batch_transfer normalises them"
            )
        pooled, tokens = encode_kept(self.model.visual, batch["image"], batch.get("keep"))
        return self.family.outputs(self.model, batch["image"], batch["text"], F.normalize(pooled, dim=-1), tokens)

    def setup(self, stage: str) -> None:
        """Size the training loss for this process group; build the frozen governor if the data asks for it."""
        self.train_loss = self.build_loss(self.global_rank, self.trainer.world_size if self.trainer else 1)
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        selection = datamodule.on_the_fly_selection if isinstance(datamodule, OnTheFlySource) else None
        if stage == "fit" and selection is not None and self.governor is None:
            self.governor = build_governor(selection, self.data_spec())
            log.info("on-the-fly %s selection at r=%s with governor %s", selection.strategy, selection.keep_ratio,
                     selection.governor.name)

    @property
    def online_selector(self) -> Any:
        """The on-the-fly selector the governor runs (None without on-the-fly selection), e.g. for pictures."""
        return None if self.governor is None else self.governor.selector

    @property
    def in_full_patch_phase(self) -> bool:
        """True from the first step of the full-patch phase on (derived from global_step: resume-safe)."""
        return self.phase_start is not None and self.global_step >= self.phase_start

    def select_patches(self, batch: dict) -> torch.Tensor | None:
        """The ``keep`` this training step trains on: all patches in the full-patch phase, else the governor's
        (on the fly, under the trainer's precision) or the batch's own."""
        if self.in_full_patch_phase:
            return None
        if self.governor is None:
            return batch.get("keep")
        keep, fallbacks = self.governor(batch["image"])
        if torch.is_tensor(fallbacks):  # counted on the device; folded in by settle_drops (no sync per step)
            self._device_fallbacks = fallbacks if self._device_fallbacks is None else self._device_fallbacks + fallbacks
        elif fallbacks:
            self.drops["nonfinite_scores"] += fallbacks
        return keep

    def settle_drops(self) -> DropLedger:
        """This module's drop ledger with the governor's device-side fallback count folded in (one sync)."""
        pending, self._device_fallbacks = self._device_fallbacks, None
        if pending is not None and (count := int(pending)):
            self.drops["nonfinite_scores"] += count
        return self.drops

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model config with one line naming the mismatching keys; restore drops."""
        check_state_dict(self.state_dict(), checkpoint["state_dict"], "ckpt_path")
        self.drops.clear()
        self.drops.update(checkpoint.get(DROPS_KEY, {}))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """The family's loss on the kept patches (None skips a non-finite batch under ``nonfinite_loss: skip``)."""
        batch["keep"] = self.select_patches(batch)
        if self.phase is not None:
            self.log("train/full_patch_phase", float(self.in_full_patch_phase), on_step=True, on_epoch=False,
                     batch_size=1)
        outputs = self(batch)
        terms = self.family.losses(self.train_loss, outputs)
        loss = self.guard.record(self, terms["loss"], batch)
        if loss is None:
            return None
        batch_size = batch["text"].shape[0]
        # Not on the progress bar: Lightning turns progress-bar values into Python numbers every step (a device sync).
        self.log("train/loss", loss, batch_size=batch_size)
        for name in self.family.logged_terms:
            self.log(f"train/{name}", terms[name], batch_size=batch_size)
        self.log("train/logit_scale", outputs["logit_scale"], batch_size=batch_size)
        if "logit_bias" in outputs:
            self.log("train/logit_bias", outputs["logit_bias"], batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A non-finite loss or gradient skips this step inside the fused optimizer (no host sync)."""
        self.guard.before_optimizer_step(optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Clamp the temperature as CLIP does: exp(logit_scale) <= max_logit_scale; every N steps check the guard."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))
        if self.guard.due():
            self.guard.check(self)

    def on_train_epoch_end(self) -> None:
        """Check the guard's pending steps (raise or count their drops) at every epoch end."""
        self.guard.check(self)

    def on_train_end(self) -> None:
        """Check the guard's pending steps before the run summary reads the drop counts."""
        self.guard.check(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint is written only after the guard's pending steps are checked; it keeps the drop totals."""
        self.guard.check(self)
        checkpoint[DROPS_KEY] = dict(self.settle_drops())

    def on_train_start(self) -> None:
        """Say where the full-patch phase is (and that a resumed run is inside it)."""
        if self.phase_start is None:
            return
        total = int(self.trainer.estimated_stepping_batches)
        rank_zero_info(f"full-patch phase: the last {total - self.phase_start} of {total} steps (from step "
                       f"{self.phase_start}) on all patches, lr x {self.phase.lr_multiplier:g}")
        if self.global_step > self.phase_start:
            rank_zero_info(f"full-patch phase: resumed at step {self.global_step}, inside the phase "
                           f"(it began at step {self.phase_start})")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Announce the switch to all patches once, at the boundary step (console and loggers)."""
        if self.phase_start is None or self.global_step != self.phase_start or self._phase_announced:
            return
        self._phase_announced = True
        rank_zero_info(f"full-patch phase: switching to all patches at step {self.phase_start}, "
                       f"lr x {self.phase.lr_multiplier:g}")
        for logger in self.loggers:
            logger.log_metrics({"train/full_patch_phase_start": float(self.phase_start)}, step=self.phase_start)

    def _eval_step(self, batch: dict, prefix: str) -> None:
        outputs = self(batch)
        loss = self.family.losses(self.eval_loss, outputs)["loss"]
        image_features, text_features = outputs["image_features"], outputs["text_features"]
        hits = (image_features @ text_features.T).argmax(dim=1) == torch.arange(len(image_features), device=self.device)
        batch_size = batch["text"].shape[0]
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=batch_size)
        self.log(f"{prefix}/batch_i2t_top1", hits.float().mean(), sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The family's loss and in-batch image->text top-1 on held-out pairs."""
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Same as validation, logged under ``test/``."""
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        """AdamW over the model's parameters (no decay on 1-d params and embeddings; the governor is not among
        them) with per-step warm-up + cosine, times the full-patch phase's multiplier inside the phase."""
        hp = self.hparams
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused
        )
        total = int(self.trainer.estimated_stepping_batches)
        factor = warmup_cosine(min(hp.warmup_steps, max(total - 1, 1)), total, hp.min_lr_ratio)
        if self.phase is not None:
            self.phase_start = self.phase.start(total)
            factor = self.phase.lr_factor(factor, self.phase_start)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
