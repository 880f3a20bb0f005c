"""The precomputed vision pass: every image of every shard scored once by the frozen governor, one sidecar per shard.

    python -m lightning_juicer vision --config configs/preprocess/vision.yaml \\
        --shards 'data/synthetic/train/{00000..00007}.tar' --governor.name vit_small_patch16_224.dino --devices 8

**Geometry.** Images are decoded in the DataLoader workers, resized (shortest side, the governor's
interpolation) and centre-cropped to the governor's image size, and normalised on the device with
the governor's mean / std. This is open_clip's eval transform (``resize_mode="shortest"``), the one
the student uses (``DataSpec.image_transform``): both crops are the central square of the original
image whatever the sizes, so governor grid cells and student grid cells cover the same image
regions (grids of different sizes are resampled at selection time). On a GPU (``decode: auto``)
complete JPEGs are instead decoded on the device (nvjpeg) and resized and cropped there with the same
geometry (``io.decode.decode_on_device``, ``io.transforms.tensor_crop_transform``).

**Resuming.** A shard whose sidecar exists and matches the configured governor, grid and settings
is skipped (``existing``); one written with another governor or settings is refused at start-up
(``on_mismatch=error``) or recomputed (``overwrite``). Bad samples are counted skips and a shard
that cannot be read to its end gets no sidecar (``failed``; see :mod:`lightning_juicer.passes.reader`).
The run machinery (ranks, atomic writes, manifest, progress) is :mod:`lightning_juicer.passes.base`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning as L
import open_clip
import torch
from jsonargparse.typing import NonNegativeInt
from torch import nn

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.loading import load_governor_model
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.governor.settings import GovernorSettings
from lightning_juicer.io.sidecar import SUFFIX, USE_TIME_SETTINGS, SidecarRows, check_sidecar, governor_id
from lightning_juicer.io.sidecar import sidecar_path, write_sidecar
from lightning_juicer.io.decode import decode_on_device, gpu_decode, load_rgb
from lightning_juicer.passes.base import SKIPPED, OpenShard, ShardPass, pass_command
from lightning_juicer.passes.config import PassSettings, to_settings
from lightning_juicer.io.transforms import crop_transform, tensor_crop_transform
from lightning_juicer.passes.reader import ShardBatches, ShardJob

log = logging.getLogger(__name__)
PROG = "python -m lightning_juicer vision"


@dataclass
class VisionSettings(PassSettings):
    """The vision pass: governor patch scores (Eq. 2) and class evidence for every shard, one sidecar per shard.

    Args:
        sidecar_dir: null: each sidecar next to its shard (required for remote shards).
        governor: the frozen governor and its class head.
        threshold: evidence ε: stored in the settings, applied at use time (p > ε); null: the ε the head
            file records (calibrated by preprocess/fit_head.py; 1.0 when it abstains), else 0.7.
        max_classes: evidence N: at most this many classes at use time (0: no evidence).
        top_k_classes: classes + probabilities stored per sample.
        decode: JPEG decoding: auto = on the GPU (nvjpeg, full size, resized there) when the pass runs on
            one, else in the DataLoader workers (reduced-size draft); cpu = always in the workers; gpu = on
            the GPU or a one-line error.
    """

    sidecar_dir: str | None = None
    governor: GovernorSettings = field(default_factory=GovernorSettings)
    threshold: float | None = None
    max_classes: NonNegativeInt = 3
    top_k_classes: NonNegativeInt = 5
    decode: Literal["auto", "cpu", "gpu"] = "auto"

    def check(self) -> None:
        super().check()
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold: {self.threshold} is outside [0, 1] (null: the head file's recorded ε)")


DEFAULT_THRESHOLD = 0.7


def evidence_threshold(requested: float | None, head: ClassHead | None) -> float:
    """The explicit ε, else the one the head records, else ``DEFAULT_THRESHOLD``."""
    if requested is not None:
        return float(requested)
    if head is not None and head.threshold is not None:
        return float(head.threshold)
    return DEFAULT_THRESHOLD


class Governor(NamedTuple):
    """The loaded governor: canonical name, scorer, class head (or None), and the settings stored in every sidecar."""

    name: str
    scorer: PatchScorer
    head: ClassHead | None
    settings: dict[str, Any]


def vision_settings(value: VisionSettings | Mapping[str, Any]) -> VisionSettings:
    """Checked settings from a VisionSettings or a mapping shaped like ``configs/preprocess/vision.yaml``."""
    return to_settings(VisionSettings, value, PROG)


def class_head(cfg: GovernorSettings, model: nn.Module, scorer: PatchScorer) -> ClassHead | None:
    """The class-evidence head ``cfg.head`` asks for (None: no evidence)."""
    head = cfg.head
    if head.kind == "none":
        return None
    if head.kind == "auto":
        inner = getattr(model, "model", model)
        has_head = hasattr(inner, "get_classifier") and isinstance(inner.get_classifier(), nn.Linear)
        return ClassHead.from_model(model, head.classnames, head.activation) if has_head else None
    if head.kind == "model":
        return ClassHead.from_model(model, head.classnames, head.activation)
    if head.kind == "file":
        if not head.path:
            raise ConfigError("governor.head.path: head kind 'file' needs the path of a linear head file")
        return ClassHead.from_file(head.path, head.classnames, embed_dim=scorer.embed_dim, activation=head.activation)
    if not cfg.name.startswith("open_clip:"):
        raise ConfigError("governor.head.kind: zero_shot heads need an open_clip governor (open_clip:<model>)")
    tokenizer = open_clip.get_tokenizer(cfg.name[len("open_clip:") :])
    return ClassHead.zero_shot(model, tokenizer, head.classnames, activation=head.activation)


def load_pass_governor(settings: VisionSettings) -> Governor:
    """Load the governor and its class head and describe them as sidecar settings."""
    cfg = settings.governor
    model = load_governor_model(cfg.name, cfg.pretrained)
    scorer = PatchScorer(model)
    head = class_head(cfg, model, scorer)
    if head is None:
        log.warning("vision pass: governor %s has no class head; sidecars get no class evidence", cfg.name)
    folder = cfg.name.split("local-dir:")[-1]
    pretrained = "folder" if "local-dir:" in cfg.name or Path(folder).is_dir() else cfg.pretrained
    threshold = evidence_threshold(settings.threshold, head)
    if head is not None and threshold >= 1.0:
        log.warning("vision pass: evidence threshold %s (%s): no class can pass it, sidecars get no class evidence",
                    threshold, "set by threshold" if settings.threshold is not None else
                    f"recorded by head file {cfg.head.path}: it reached no target precision on held-out images")
    kind = cfg.head.kind if cfg.head.kind != "auto" else ("model" if head else "none")
    head_info: dict[str, Any] = {"kind": kind}
    if head is not None:
        head_info.update(num_classes=len(head.classnames), activation=head.activation)
        if kind == "file":
            head_info["path"] = governor_id(cfg.head.path)
    sidecar_settings = {
        "image_size": list(scorer.image_size),
        "patch_size": list(scorer.patch_size),
        "grid": list(scorer.grid),
        "mean": [float(v) for v in scorer.mean],
        "std": [float(v) for v in scorer.std],
        "interpolation": scorer.interpolation,
        "resize_mode": "shortest",
        "pretrained": pretrained if isinstance(pretrained, bool) else governor_id(pretrained),
        "head": head_info,
        "threshold": threshold,
        "max_classes": int(settings.max_classes),
        "top_k_classes": int(settings.top_k_classes) if head is not None else 0,
    }
    return Governor(governor_id(cfg.name), scorer, head, sidecar_settings)


class GovernorPredictor(L.LightningModule):
    """Normalises uint8 batches, runs the frozen governor and its head: scores [B, m], top classes and probs.

    A batch read with undecoded JPEGs (``jpeg`` / ``jpeg_rows``, the GPU decode path; ``image`` then holds
    only the other rows) is assembled on the device: its JPEGs decoded, resized and cropped there; one the
    device cannot decode is decoded on the host, and one that fails there too is a ``corrupt_image`` skip
    (the prediction's ``SKIPPED``, its row left black)."""

    def __init__(self, governor: Governor, top_k_classes: int) -> None:
        super().__init__()
        self.scorer = governor.scorer
        self.head = governor.head
        self.top_k = min(top_k_classes, len(self.head.classnames)) if self.head is not None else 0
        self.crop = tensor_crop_transform(self.scorer.image_size, self.scorer.interpolation)
        self.host_crop = crop_transform(self.scorer.image_size, self.scorer.interpolation)
        self.register_buffer("mean", torch.tensor(self.scorer.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.scorer.std).view(1, -1, 1, 1), persistent=False)

    def decode_jpegs(self, batch: dict) -> tuple[torch.Tensor, dict[int, str]]:
        """The batch's images [len(key), 3, H, W] on the device, its undecoded JPEGs decoded there, and the rows
        that failed."""
        images, failed = batch["image"], {}
        rows = batch.get("jpeg_rows") or []
        if not rows:
            return images, failed
        worker_rows = sorted(set(range(len(batch["key"]))) - set(rows))
        assembled = images.new_empty((len(batch["key"]), *images.shape[1:]))
        assembled[worker_rows] = images
        images = assembled
        for row, data, decoded in zip(rows, batch["jpeg"], decode_on_device(batch["jpeg"], self.device)):
            try:
                images[row] = self.crop(decoded) if decoded is not None else self.host_crop(load_rgb(data)).to(self.device)
            except Exception as exn:  # PIL raises many types for broken files
                images[row] = 0
                failed[row] = "corrupt_image"
                log.debug("vision pass: %s failed to decode on the device and the host: %r", batch["key"][row], exn)
        return images, failed

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Patch scores and top-k class evidence for one batch (empty tensors for an empty batch)."""
        images, failed = self.decode_jpegs(batch)
        n, m = len(images), self.scorer.num_patches
        if n == 0:
            empty = torch.empty(0, self.top_k)
            return {"scores": torch.empty(0, m), "classes": empty.long(), "probs": empty}
        out = self.scorer((images.float() / 255 - self.mean) / self.std)
        if self.head is None:
            classes, probs = torch.empty(n, 0, dtype=torch.long), torch.empty(n, 0)
        else:
            with torch.autocast(self.device.type, enabled=False):
                probs, classes = self.head(out.cls.float()).topk(self.top_k, dim=-1)
        prediction = {"scores": out.scores.float(), "classes": classes, "probs": probs.float()}
        return {**prediction, SKIPPED: failed} if failed else prediction


class VisionPass(ShardPass[VisionSettings]):
    """Governor scores and class evidence -> ``<shard stem>.juice.parquet`` sidecars."""

    settings_type = VisionSettings
    label = "vision pass"
    manifest_name = "vision_pass.manifest.json"
    output_key = "sidecar_dir"
    output_what = "sidecar"
    written = "in sidecars"
    governor: Governor
    device_decode: bool = False

    def output_path(self, url: str) -> Path:
        return sidecar_path(url, self.settings.sidecar_dir)

    def load_models(self) -> None:
        self.governor = load_pass_governor(self.settings)

    def header(self) -> dict[str, Any]:
        return {"format_version": 1, "governor": self.governor.name, "settings": self.governor.settings}

    def existing(self, job: ShardJob) -> dict[str, Any] | None:
        if not job.output.is_file():
            return None
        identity = {k: v for k, v in self.governor.settings.items() if k not in USE_TIME_SETTINGS}
        try:
            info = check_sidecar(job.output, self.governor.name, self.governor.scorer.grid, identity,
                                 key="governor.name",
                                 remedy="delete it, set --on_mismatch overwrite to recompute it, use another sidecar_dir,")
        except ConfigError as error:
            return self.mismatched(error)
        return info.extra.get("counts") or {"in": info.num_rows, "written": info.num_rows, "skipped": {}}

    def on_device(self, device: Any) -> None:
        """JPEGs are decoded on ``device`` when it is a GPU (``decode: auto``) or ``decode: gpu`` asks for it."""
        self.device_decode = gpu_decode(self.settings.decode, device)

    def dataset_for(self, jobs: list[ShardJob]) -> ShardBatches:
        scorer = self.governor.scorer
        transform = crop_transform(scorer.image_size, scorer.interpolation)
        return ShardBatches(jobs, transform, self.settings.batch_size, scorer.image_size, encoded=self.device_decode)

    def predictor(self) -> GovernorPredictor:
        return GovernorPredictor(self.governor, self.settings.top_k_classes)

    def finish_shard(self, job: ShardJob, shard: OpenShard, counts: dict[str, Any]) -> dict[str, Any]:
        arrays, head = shard.arrays(), self.governor.head
        classnames = head.classnames if head is not None else []
        classes = [[classnames[i] for i in row] for row in arrays["classes"].tolist()]
        rows = SidecarRows(shard.keys, arrays["scores"], self.governor.scorer.grid, classes, arrays["probs"])
        extra = {"counts": counts, "shard": job.output.name[: -len(SUFFIX)]}
        write_sidecar(job.output, rows, self.governor.name, self.governor.settings, extra)
        return counts


def run_vision_pass(settings: VisionSettings | Mapping[str, Any], **trainer_kwargs: Any) -> dict | None:
    """Run the pass; returns the merged manifest on global rank 0 (None on other ranks)."""
    return VisionPass(vision_settings(settings)).run(**trainer_kwargs)


def main(argv: list[str]) -> dict | None:
    """``python -m lightning_juicer vision --config configs/preprocess/vision.yaml --shards ...``."""
    return pass_command(VisionPass, argv, PROG, __doc__)
