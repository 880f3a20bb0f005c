"""TensorBoard pictures of what the student trains on: kept patches in colour, discarded ones greyed out."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import ClassHead, class_evidence
from lightning_juicer.visualize import denormalize, grey_out_dropped

log = logging.getLogger(__name__)


class KeptPatchPictures(L.Callback):
    """At the first training step and every ``every_n_steps`` steps, log a grid of the batch's images with the
    discarded patches greyed (``train/kept_patches``).

    With an on-the-fly governor, the class evidence (p > ``threshold``) of each pictured image is logged
    as text next to the grid, from ``head`` (a linear head file, e.g. from ``preprocess/fit_head.py``)
    or else the governor's own classifier when its folder records an activation (see
    ``ClassHead.from_model``); a head that cannot be used is reported once and the pictures go on.
    """

    def __init__(self, every_n_steps: int = 200, max_images: int = 16, threshold: float = 0.7,
                 head: str | None = None) -> None:
        if every_n_steps < 1:
            raise ConfigError("trainer.callbacks[KeptPatchPictures].init_args.every_n_steps: must be >= 1")
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.threshold = threshold
        self.head_path = head
        self._head: ClassHead | None = None
        self._no_head = False

    def _evidence(self, trainer, images: torch.Tensor) -> list[str] | None:
        selector = getattr(trainer.lightning_module, "online_selector", None)  # held by JuicerCLIP
        if selector is None:
            return None
        if self._no_head:
            return None
        if self._head is None:
            try:
                if self.head_path:
                    head = ClassHead.from_file(self.head_path, embed_dim=selector.scorer.embed_dim)
                else:
                    head = ClassHead.from_model(selector.scorer)
            except ConfigError as e:
                log.warning("KeptPatchPictures: no class evidence next to the pictures: %s", e)
                self._no_head = True
                return None
            self._head = head.to(images.device)
        spec = trainer.datamodule.data_spec
        cls = selector.scorer(selector.scorer.prepare(images.float(), spec.mean, spec.std)).cls
        found = class_evidence(self._head(cls), self._head.classnames, self.threshold)
        return [", ".join(f"{name} {p:.2f}" for name, p in classes) or "-" for classes in found]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Log the picture (rank zero, TensorBoard only)."""
        step = trainer.global_step
        due = step == 1 or step % self.every_n_steps == 0
        if not trainer.is_global_zero or not due or not isinstance(trainer.logger, TensorBoardLogger):
            return
        spec = pl_module.data_spec()
        images = batch["image"][: self.max_images]
        keep = batch.get("keep")
        keep = None if keep is None else keep[: self.max_images]
        pictures = grey_out_dropped(denormalize(images.float(), spec.mean, spec.std), keep, spec.patch_size)
        experiment = trainer.logger.experiment
        experiment.add_image("train/kept_patches", make_grid(pictures, nrow=8, padding=2).cpu(), step)
        evidence = self._evidence(trainer, images)
        if evidence is not None:
            rows = [f"| {i} | {key} | {text} |" for i, (key, text) in enumerate(zip(batch["key"], evidence))]
            experiment.add_text("train/class_evidence", "\n".join(["| # | key | evidence |", "|---|---|---|", *rows]), step)
