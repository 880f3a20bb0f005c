"""Precomputed vision pass: every image of every shard scored once by the frozen governor, one sidecar per shard.

**Why Lightning ``Trainer.predict``.** The same code runs on CPU, one GPU, several GPUs and several
nodes under every launcher Lightning supports (its own ddp / ddp_spawn, torchrun, SLURM), with bf16
autocast from ``precision`` and Lightning's progress bar; nothing distributed is written by hand.
Lightning's distributed sampler is not used: the pass's ``IterableDataset`` gives rank r the shards
``r::world`` and each DataLoader worker whole shards of its rank, batched within the shard, so one
shard's batches reach the ``SidecarWriter`` (a ``BasePredictionWriter``) in order from one worker,
the last one flagged, and the writer writes that shard's sidecar the moment it is complete. No
collective runs per batch, so ranks with uneven work never wait on each other; one barrier at the
end lets rank 0 merge the per-rank manifests.

**Geometry.** Images are decoded in the DataLoader workers, resized (shortest side, the governor's
interpolation) and centre-cropped to the governor's image size, and normalised on the device with
the governor's mean / std. This is open_clip's eval transform (``resize_mode="shortest"``), the one
the student uses (``DataSpec.image_transform``): both crops are the central square of the original
image whatever the sizes, so governor grid cells and student grid cells cover the same image
regions (grids of different sizes are resampled at selection time). A student that crops
differently (random crops, squashing) would keep patches that the governor did not score.

**Resuming.** A shard whose sidecar exists and matches the configured governor, grid and settings
is skipped and reported as ``existing``; sidecars are written atomically (temporary file +
``os.replace``), so an existing sidecar is complete. A sidecar written with another governor or
settings is refused at start-up (``on_mismatch=error``) or recomputed (``on_mismatch=overwrite``).

**Bad input.** A sample without an image (``no_image``), with an image that cannot be decoded
(``corrupt_image``), repeating a key already written (``duplicate_key``) or tar members whose name
has no key (``bad_key``: ``...jpg``, key ``..``) is a counted skip and the shard goes on. A shard that cannot be read to its end (missing, truncated tar) gets no sidecar: it
is reported ``failed`` with the error, and a rerun retries it.

**Manifest.** Each rank appends one JSON line per shard to ``<manifest>.rank<r>.jsonl`` as the shard
finishes; at the end rank 0 merges them into ``<manifest>`` (JSON: per-shard status, counts in /
written / skipped by reason, and totals and images/s for the run). Multi-node runs need the sidecar
and manifest folders on a shared file system.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import open_clip
import torch
import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision.transforms import v2 as T

from lightning_juicer.io.decode import DraftedDecoder
from lightning_juicer.io.tars import CAPTION_EXTS, IMAGE_EXTS
from lightning_juicer.io.shards import count_samples, expand_shards
from lightning_juicer.io.tars import tar_samples
from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.loading import load_governor_model
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.io.sidecar import (
    SUFFIX,
    SidecarInfo,
    SidecarRows,
    check_sidecar,
    governor_id,
    sidecar_path,
    write_sidecar,
)
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.outputs import check_writable, check_writable_parents

log = logging.getLogger(__name__)

HEAD_KINDS = ("auto", "model", "file", "zero_shot", "none")
MISMATCH_POLICIES = ("error", "overwrite")
SKIP_REASONS = ("no_image", "corrupt_image", "duplicate_key", "no_caption", "bad_key")
USE_TIME_SETTINGS = ("threshold", "max_classes")
MANIFEST_NAME = "vision_pass.manifest.json"
_LOG_FIRST = 10
# Shards, not a sampler, decide what each batch holds; the writer needs no sample indices.
warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass
class HeadConfig:
    """Class-evidence head Γ_pred: ``auto`` (the governor's own head if it has one, else none), ``model``,
    ``file`` (a linear head file at ``path``), ``zero_shot`` (open_clip governors) or ``none``."""

    kind: str = "auto"
    path: str | None = None
    classnames: Any = None
    activation: str | None = None  # None: the one the governor folder / head file records (refused if none)


@dataclass
class GovernorConfig:
    """The frozen governor: a name or folder for ``load_governor_model`` and its weights."""

    name: str = "vit_small_patch16_224.dino"
    pretrained: Any = True
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class VisionPassConfig:
    """Everything the vision pass reads from ``configs/preprocess/vision.yaml`` and the command line."""

    shards: Any = MISSING
    sidecar_dir: str | None = None
    manifest: str | None = None
    on_mismatch: str = "error"
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    batch_size: int = 256
    num_workers: int = 8
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    threshold: float = 0.7
    max_classes: int = 3
    top_k_classes: int = 5
    progress: bool = True


class ShardJob(NamedTuple):
    """One input shard: its position in the shard list, URL, sidecar file and sample count (None if unknown)."""

    index: int
    url: str
    sidecar: Path
    size: int | None


class Governor(NamedTuple):
    """The loaded governor: scorer, class head (or None), and the settings stored in every sidecar."""

    name: str
    scorer: PatchScorer
    head: ClassHead | None
    settings: dict[str, Any]


def to_config(cfg: VisionPassConfig | DictConfig | Mapping[str, Any]) -> VisionPassConfig:
    """A validated VisionPassConfig from a dataclass, an omegaconf config or a plain mapping."""
    merged = OmegaConf.merge(OmegaConf.structured(VisionPassConfig), cfg)
    if OmegaConf.is_missing(merged, "shards"):
        raise ConfigError("shards: no shards given; pass shards='/data/cc3m/{00000..00331}.tar'")
    out: VisionPassConfig = OmegaConf.to_object(merged)
    if out.governor.head.kind not in HEAD_KINDS:
        raise ConfigError(f"governor.head.kind: {out.governor.head.kind!r} is not one of {HEAD_KINDS}")
    if out.on_mismatch not in MISMATCH_POLICIES:
        raise ConfigError(f"on_mismatch: {out.on_mismatch!r} is not one of {MISMATCH_POLICIES}")
    for name in ("batch_size", "top_k_classes", "max_classes", "num_workers"):
        if getattr(out, name) < (1 if name == "batch_size" else 0):
            raise ConfigError(f"{name}: {getattr(out, name)} is out of range")
    if isinstance(out.shards, (list, tuple)):
        out.shards = [str(s) for s in out.shards]
    return out


def _head(cfg: GovernorConfig, model: nn.Module, scorer: PatchScorer) -> ClassHead | None:
    head = cfg.head
    classnames = list(head.classnames) if isinstance(head.classnames, (list, tuple)) else head.classnames
    if head.kind == "none":
        return None
    if head.kind == "auto":
        inner = getattr(model, "model", model)
        has_head = hasattr(inner, "get_classifier") and isinstance(inner.get_classifier(), nn.Linear)
        return ClassHead.from_model(model, classnames, head.activation) if has_head else None
    if head.kind == "model":
        return ClassHead.from_model(model, classnames, head.activation)
    if head.kind == "file":
        if not head.path:
            raise ConfigError("governor.head.path: head kind 'file' needs the path of a linear head file")
        return ClassHead.from_file(head.path, classnames, embed_dim=scorer.embed_dim, activation=head.activation)
    if not cfg.name.startswith("open_clip:"):
        raise ConfigError("governor.head.kind: zero_shot heads need an open_clip governor (open_clip:<model>)")
    tokenizer = open_clip.get_tokenizer(cfg.name[len("open_clip:") :])
    return ClassHead.zero_shot(model, tokenizer, classnames, activation=head.activation)


def load_pass_governor(cfg: VisionPassConfig) -> Governor:
    """Load the governor and its class head and describe them as sidecar settings."""
    model = load_governor_model(cfg.governor.name, cfg.governor.pretrained)
    scorer = PatchScorer(model)
    head = _head(cfg.governor, model, scorer)
    if head is None:
        log.warning("vision pass: governor %s has no class head; sidecars get no class evidence", cfg.governor.name)
    pretrained = cfg.governor.pretrained
    folder = cfg.governor.name.split("local-dir:")[-1]
    if "local-dir:" in cfg.governor.name or Path(folder).is_dir():
        pretrained = "folder"
    kind = cfg.governor.head.kind if cfg.governor.head.kind != "auto" else ("model" if head else "none")
    head_info: dict[str, Any] = {"kind": kind}
    if head is not None:
        head_info.update(num_classes=len(head.classnames), activation=head.activation)
        if kind == "file":
            head_info["path"] = governor_id(cfg.governor.head.path)
    settings = {
        "image_size": list(scorer.image_size),
        "patch_size": list(scorer.patch_size),
        "grid": list(scorer.grid),
        "mean": [float(v) for v in scorer.mean],
        "std": [float(v) for v in scorer.std],
        "interpolation": scorer.interpolation,
        "resize_mode": "shortest",
        "pretrained": pretrained if isinstance(pretrained, bool) else governor_id(pretrained),
        "head": head_info,
        "threshold": float(cfg.threshold),
        "max_classes": int(cfg.max_classes),
        "top_k_classes": int(cfg.top_k_classes) if head is not None else 0,
    }
    return Governor(governor_id(cfg.governor.name), scorer, head, settings)


def identity_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that change the stored values (all but the use-time evidence filter)."""
    return {k: v for k, v in settings.items() if k not in USE_TIME_SETTINGS}


def plan_jobs(shards: Any, output_path: Callable[[str], Path], key: str, what: str) -> list[ShardJob]:
    """A pass's shards with their output file paths and sizes; refuses two shards sharing one output file."""
    urls = expand_shards(shards, "shards")
    jobs, seen = [], {}
    for index, (url, size) in enumerate(zip(urls, shard_sizes(urls))):
        path = output_path(url)
        if path in seen:
            raise ConfigError(f"{key}: shards {seen[path]} and {url} would share the {what} {path}")
        seen[path] = url
        jobs.append(ShardJob(index, url, path, size))
    return jobs


def plan_shards(cfg: VisionPassConfig) -> list[ShardJob]:
    """The vision pass's shards with their sidecar paths and sizes."""
    return plan_jobs(cfg.shards, lambda url: sidecar_path(url, cfg.sidecar_dir), "sidecar_dir", "sidecar")


def shard_sizes(urls: list[str]) -> list[int | None]:
    """Samples per shard from ``sizes.json`` (read once per folder) or img2dataset ``*_stats.json``; None if unknown."""
    by_folder: dict[Path, dict] = {}
    sizes = []
    for url in urls:
        folder, name = Path(url).parent, Path(url).name
        if folder not in by_folder:
            listing = folder / "sizes.json"
            by_folder[folder] = json.loads(listing.read_text()) if listing.is_file() else {}
        sizes.append(int(by_folder[folder][name]) if name in by_folder[folder] else count_samples([url]))
    return sizes


def manifest_path(cfg: VisionPassConfig, jobs: list[ShardJob]) -> Path:
    """Where the merged manifest goes: ``manifest``, else next to the first sidecar."""
    return Path(cfg.manifest) if cfg.manifest else jobs[0].sidecar.parent / MANIFEST_NAME


def existing_sidecar(job: ShardJob, governor: Governor, on_mismatch: str) -> SidecarInfo | None:
    """The finished sidecar of a shard, None when it must be (re)computed; ConfigError on a refused mismatch."""
    if not job.sidecar.is_file():
        return None
    try:
        return check_sidecar(
            job.sidecar,
            governor.name,
            governor.scorer.grid,
            identity_settings(governor.settings),
            key="governor.name",
            remedy="delete it, set on_mismatch=overwrite to recompute it, use another sidecar_dir,",
        )
    except ConfigError as e:
        if on_mismatch != "overwrite":
            raise
        log.warning("vision pass: recomputing %s: %s", job.sidecar, e)
        return None


def governor_transform(scorer: PatchScorer) -> Callable:
    """PIL image -> uint8 [3, H, W]: resize shortest side + centre crop to the governor's image size."""
    return crop_transform(scorer.image_size, scorer.interpolation)


def crop_transform(image_size: tuple[int, int], interpolation_name: str) -> Callable:
    """PIL image -> uint8 [3, H, W]: resize shortest side + centre crop to ``image_size``."""
    height, width = image_size
    interpolation = _INTERPOLATIONS.get(interpolation_name, T.InterpolationMode.BICUBIC)
    return T.Compose(
        [T.Resize(max(height, width), interpolation=interpolation, antialias=True), T.CenterCrop((height, width)),
         T.PILToTensor()]
    )


_logged: Counter[str] = Counter()


def _skip(counts: Counter[str], reason: str, key: str, url: str, detail: str = "") -> None:
    counts[reason] += 1
    _logged[reason] += 1
    if _logged[reason] <= _LOG_FIRST or _logged[reason] % 1000 == 0:
        log.warning("vision pass: skipped %s in %s (%s)%s", key, url, reason, f": {detail}" if detail else "")


def _caption(sample: dict) -> str | None:
    raw = next((sample[ext] for ext in CAPTION_EXTS if ext in sample), None)
    try:
        text = raw.decode("utf-8").strip() if raw is not None else ""
    except UnicodeDecodeError:
        return None
    return text or None


def shard_batches(
    job: ShardJob, transform: Callable, batch_size: int, image_size: tuple[int, int], captions: bool = False
) -> Iterator[dict]:
    """One shard as batches ``{shard, key, image uint8, last, counts, error}``; the last one carries the counts.

    With ``captions`` the batches also carry ``caption`` (str list) and a sample without a readable
    caption is a counted ``no_caption`` skip.
    """
    errors: list[str] = []

    def on_error(exn: Exception) -> bool:
        first = str(exn.args[0]).split(" @ ")[0] if exn.args else ""
        errors.append(f"{type(exn).__name__}: {' '.join(first.split())[:300]}".rstrip(": "))
        return True

    decode = DraftedDecoder(transform)
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    keys: list[str] = []
    images: list[torch.Tensor] = []
    texts: list[str] = []
    held: dict | None = None
    total = 0
    def unkeyed(name: str, url: str) -> None:
        total_unkeyed[0] += 1
        _skip(counts, "bad_key", name, url, "a tar member name without a key")

    total_unkeyed = [0]
    for sample in tar_samples(unkeyed, on_error)(iter([{"url": job.url}])):
        total += 1
        key = str(sample.get("__key__"))
        data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
        if key in seen:
            _skip(counts, "duplicate_key", key, job.url)
            continue
        if data is None:
            _skip(counts, "no_image", key, job.url)
            continue
        text = _caption(sample) if captions else None
        if captions and text is None:
            _skip(counts, "no_caption", key, job.url)
            continue
        try:
            image = transform(decode(data))
        except Exception as exn:  # PIL raises many types for broken files
            _skip(counts, "corrupt_image", key, job.url, repr(exn))
            continue
        seen.add(key)
        keys.append(key)
        images.append(image)
        texts.append(text)
        if len(keys) == batch_size:
            if held is not None:
                yield held
            held, keys, images, texts = _batch(job, keys, images, image_size, texts if captions else None), [], [], []
    if held is not None and keys:
        yield held
        held = None
    last = held if held is not None else _batch(job, keys, images, image_size, texts if captions else None)
    counted = {"in": total + total_unkeyed[0], "skipped": dict(sorted(counts.items()))}
    last.update(last=True, counts=counted, error="; ".join(dict.fromkeys(errors)) or None)
    yield last


def _batch(
    job: ShardJob, keys: list[str], images: list[torch.Tensor], image_size: tuple[int, int], texts: list[str] | None
) -> dict:
    stacked = torch.stack(images) if images else torch.empty(0, 3, *image_size, dtype=torch.uint8)
    batch = {"shard": job.index, "key": list(keys), "image": stacked, "last": False, "counts": None, "error": None}
    if texts is not None:
        batch["caption"] = list(texts)
    return batch


class ShardBatches(IterableDataset):
    """Whole shards per DataLoader worker (webdataset's ``split_by_worker``), batched within each shard."""

    def __init__(
        self,
        jobs: list[ShardJob],
        transform: Callable,
        batch_size: int,
        image_size: tuple[int, int],
        captions: bool = False,
    ) -> None:
        super().__init__()
        self.jobs = jobs
        self.transform = transform
        self.batch_size = batch_size
        self.image_size = image_size
        self.captions = captions

    def __iter__(self) -> Iterator[dict]:
        for job in wds.split_by_worker(self.jobs):
            yield from shard_batches(job, self.transform, self.batch_size, self.image_size, self.captions)


class RankPlan(NamedTuple):
    """This rank's shards: those to compute and those whose sidecar is already finished."""

    pending: list[ShardJob]
    existing: list[tuple[ShardJob, SidecarInfo]]


class ShardData(L.LightningDataModule):
    """Gives rank r the shards r::world whose sidecars are not finished yet."""

    def __init__(self, jobs: list[ShardJob], governor: Governor, cfg: VisionPassConfig) -> None:
        super().__init__()
        self.jobs = jobs
        self.governor = governor
        self.cfg = cfg
        self.plan = RankPlan([], [])

    def setup(self, stage: str) -> None:
        """Split the shards over ranks and check this rank's existing sidecars."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        pending, existing = [], []
        for job in self.jobs[rank::world]:
            info = self.finished(job)
            if info is None:
                for stale in job.sidecar.parent.glob(f"{job.sidecar.name}.tmp-*"):
                    stale.unlink(missing_ok=True)
                pending.append(job)
            else:
                existing.append((job, info))
        self.plan = RankPlan(pending, existing)

    def finished(self, job: ShardJob) -> SidecarInfo | None:
        """The shard's finished output file, or None when it must be computed."""
        return existing_sidecar(job, self.governor, self.cfg.on_mismatch)

    def dataset(self) -> ShardBatches:
        """This rank's pending shards as batches of uint8 images at the governor's size."""
        scorer = self.governor.scorer
        return ShardBatches(self.plan.pending, governor_transform(scorer), self.cfg.batch_size, scorer.image_size)

    @property
    def num_batches(self) -> int | None:
        """Batches this rank will run, when every pending shard's size is known (for the progress bar)."""
        sizes = [job.size for job in self.plan.pending]
        if any(s is None for s in sizes):
            return None
        return sum(max(1, math.ceil(s / self.cfg.batch_size)) for s in sizes)

    def predict_dataloader(self) -> DataLoader:
        """Decoding and resizing in workers; batches of uint8 images, one shard at a time per worker."""
        workers = min(self.cfg.num_workers, len(self.plan.pending))
        return DataLoader(
            self.dataset(),
            batch_size=None,
            num_workers=workers,
            pin_memory=self.trainer.strategy.root_device.type == "cuda",
        )


class GovernorPredictor(L.LightningModule):
    """Normalises uint8 batches, runs the frozen governor and its head: scores [B, m], top classes and probs."""

    def __init__(self, governor: Governor, top_k_classes: int) -> None:
        super().__init__()
        self.scorer = governor.scorer
        self.head = governor.head
        self.top_k = min(top_k_classes, len(self.head.classnames)) if self.head is not None else 0
        self.register_buffer("mean", torch.tensor(self.scorer.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.scorer.std).view(1, -1, 1, 1), persistent=False)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Patch scores and top-k class evidence for one batch (empty tensors for an empty batch)."""
        images = batch["image"]
        n, m = images.shape[0], self.scorer.num_patches
        if n == 0:
            empty = torch.empty(0, self.top_k)
            return {"scores": torch.empty(0, m), "classes": empty.long(), "probs": empty}
        out = self.scorer((images.float() / 255 - self.mean) / self.std)
        if self.head is None:
            classes, probs = torch.empty(n, 0, dtype=torch.long), torch.empty(n, 0)
        else:
            with torch.autocast(self.device.type, enabled=False):
                probs, classes = self.head(out.cls.float()).topk(self.top_k, dim=-1)
        return {"scores": out.scores.float(), "classes": classes, "probs": probs.float()}


class _OpenShard:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, keys: list[str], prediction: dict[str, torch.Tensor]) -> None:
        self.keys.extend(keys)
        self.parts.append({k: v.detach().cpu().numpy() for k, v in prediction.items()})

    def rows(self, grid: tuple[int, int], classnames: list[str]) -> SidecarRows:
        m = grid[0] * grid[1]
        scores = np.concatenate([p["scores"] for p in self.parts]) if self.parts else np.zeros((0, m))
        probs = np.concatenate([p["probs"] for p in self.parts]) if self.parts else np.zeros((0, 0))
        indices = np.concatenate([p["classes"] for p in self.parts]) if self.parts else np.zeros((0, 0), int)
        classes = [[classnames[i] for i in row] for row in indices.tolist()]
        return SidecarRows(self.keys, scores, grid, classes, probs)


class SidecarWriter(BasePredictionWriter):
    """Collects each shard's batches and writes its sidecar atomically when the shard's last batch arrives."""

    merge_options: dict[str, Any] = {}

    def __init__(self, jobs: list[ShardJob], governor: Any, manifest: Path, header: dict[str, Any]) -> None:
        super().__init__(write_interval="batch")
        self.jobs = {job.index: job for job in jobs}
        self.governor = governor
        self.manifest = manifest
        self.header = header
        self._open: dict[int, _OpenShard] = {}
        self._rank_file: Any = None
        self._start = 0.0
        self._scored = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Start this rank's manifest lines with the shards whose sidecars were already finished."""
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self._rank_file = open(rank_manifest(self.manifest, trainer.global_rank), "w", encoding="utf-8")
        self._start = time.perf_counter()
        for job, info in trainer.datamodule.plan.existing:
            self._record(job, "existing", trainer.global_rank, **self.existing_counts(info))

    def existing_counts(self, info: SidecarInfo) -> dict[str, Any]:
        """The counts a finished sidecar recorded when it was written (for its manifest line)."""
        return info.extra.get("counts") or {"in": info.num_rows, "written": info.num_rows, "skipped": {}}

    def _record(self, job: ShardJob, status: str, rank: int, **fields: Any) -> None:
        line = {"index": job.index, "shard": job.url, "sidecar": str(job.sidecar), "status": status, "rank": rank}
        self._rank_file.write(json.dumps({**line, **fields}) + "\n")
        self._rank_file.flush()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add a batch to its shard; write the shard's sidecar when this is its last batch."""
        shard = self._open.setdefault(batch["shard"], _OpenShard())
        shard.add(batch["key"], prediction)
        if batch["last"]:
            self._finish(self.jobs[batch["shard"]], self._open.pop(batch["shard"]), batch, trainer.global_rank)

    def _finish(self, job: ShardJob, shard: _OpenShard, batch: dict, rank: int) -> None:
        counts = {"in": batch["counts"]["in"], "written": len(shard.keys), "skipped": batch["counts"]["skipped"]}
        if batch["error"]:
            log.error("vision pass: shard %s could not be read to its end (%s); no sidecar written", job.url,
                      batch["error"])
            self._record(job, "failed", rank, error=batch["error"], **{**counts, "written": 0})
            return
        head = self.governor.head
        rows = shard.rows(self.governor.scorer.grid, head.classnames if head is not None else [])
        extra = {"counts": counts, "shard": job.sidecar.name[: -len(SUFFIX)]}
        write_sidecar(job.sidecar, rows, self.governor.name, self.governor.settings, extra)
        self._scored += len(shard.keys)
        self._record(job, "written", rank, **counts)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close this rank's manifest lines; after a barrier, rank 0 merges all ranks into the manifest."""
        seconds = time.perf_counter() - self._start
        self._rank_file.write(json.dumps({"rank_done": trainer.global_rank, "seconds": seconds,
                                          "scored": self._scored}) + "\n")
        self._rank_file.close()
        trainer.strategy.barrier("vision_pass_manifest")
        if trainer.is_global_zero:
            merge_manifests(self.manifest, trainer.world_size, self.header, **self.merge_options)


class ShardProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the batch total of this rank's pending shards, when their sizes are known."""

    description = "Vision pass"

    @property
    def predict_description(self) -> str:
        """The bar's label."""
        return self.description

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        """This rank's batch count from the shard sizes, else Lightning's (unknown for an iterable dataset)."""
        estimate = getattr(self.trainer.datamodule, "num_batches", None)
        return estimate if estimate is not None else super().total_predict_batches_current_dataloader


def rank_manifest(manifest: Path, rank: int) -> Path:
    """The per-rank manifest lines file of ``manifest``."""
    return manifest.with_name(f"{manifest.name}.rank{rank}.jsonl")


def merge_manifests(
    manifest: Path,
    world_size: int,
    header: dict[str, Any],
    numbers: tuple[str, ...] = (),
    counters: tuple[str, ...] = (),
    rate: str = "images_per_second",
) -> dict[str, Any]:
    """Merge the per-rank JSON lines into one manifest with totals; writes it atomically and returns it.

    Totals sum ``in``, ``written`` and ``skipped`` (by reason) over the shards, plus the given per-shard
    ``numbers`` and per-reason ``counters`` of the shards that did not fail.
    """
    shards: dict[int, dict] = {}
    ranks: dict[int, dict] = {}
    for rank in range(world_size):
        path = rank_manifest(manifest, rank)
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "rank_done" in record:
                ranks[record["rank_done"]] = record
            else:
                shards[record["index"]] = record
    records = [shards[i] for i in sorted(shards)]
    skipped: Counter[str] = Counter()
    for record in records:
        skipped.update(record.get("skipped", {}))
    status = Counter(record["status"] for record in records)
    seconds = max((r["seconds"] for r in ranks.values()), default=0.0)
    scored = sum(r["scored"] for r in ranks.values())
    totals = {
        "shards": len(records),
        "shards_written": status["written"],
        "shards_existing": status["existing"],
        "shards_failed": status["failed"],
        "samples_in": sum(r.get("in", 0) for r in records),
        "samples_written": sum(r.get("written", 0) for r in records if r["status"] != "failed"),
        "skipped": dict(sorted(skipped.items())),
    }
    done = [record for record in records if record["status"] != "failed"]
    for name in numbers:
        totals[name] = sum(record.get(name, 0) for record in done)
    for name in counters:
        summed: Counter[str] = Counter()
        for record in done:
            summed.update(record.get(name, {}))
        totals[name] = dict(sorted(summed.items()))
    run = {
        "ranks": world_size,
        "ranks_reported": sorted(ranks),
        "samples_scored": scored,
        "seconds": round(seconds, 3),
        rate: round(scored / seconds, 2) if seconds > 0 else None,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = {**header, "totals": totals, "run": run, "shards": records}
    atomic_write(manifest, lambda f: f.write(json.dumps(out, indent=1).encode()))
    for rank in range(world_size):
        rank_manifest(manifest, rank).unlink(missing_ok=True)
    return out


def check_outputs(files: list[Path], key: str, manifest: Path) -> None:
    """Before anything is computed: the folders of a pass's output files and of its manifest can be written."""
    check_writable_parents(files, key)
    check_writable(manifest.parent, "manifest")


def resolve_precision(cfg: VisionPassConfig) -> str:
    """``precision``, or by default bf16 autocast on CUDA (fp16 where bf16 is missing) and fp32 elsewhere."""
    if cfg.precision:
        return str(cfg.precision)
    if cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def run_vision_pass(cfg: VisionPassConfig | DictConfig | Mapping[str, Any], **trainer_kwargs: Any) -> dict | None:
    """Run the pass; returns the merged manifest on global rank 0 (None on other ranks)."""
    cfg = to_config(cfg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    jobs = plan_shards(cfg)
    manifest = manifest_path(cfg, jobs)
    check_outputs([job.sidecar for job in jobs], "sidecar_dir", manifest)
    governor = load_pass_governor(cfg)
    if cfg.on_mismatch == "error":
        for job in jobs:
            existing_sidecar(job, governor, cfg.on_mismatch)
    header = {
        "format_version": 1,
        "governor": governor.name,
        "settings": governor.settings,
        "manifest": str(manifest),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "started": started,
    }
    trainer = pass_trainer(cfg, SidecarWriter(jobs, governor, manifest, header), ShardProgressBar(), **trainer_kwargs)
    trainer.predict(GovernorPredictor(governor, cfg.top_k_classes), datamodule=ShardData(jobs, governor, cfg),
                    return_predictions=False)
    if trainer.is_global_zero and manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8"))
    return None


def pass_trainer(cfg: Any, writer: BasePredictionWriter, bar: TQDMProgressBar, **trainer_kwargs: Any) -> L.Trainer:
    """The predict-only Trainer of a shard pass (devices, precision, progress bar from ``cfg``)."""
    callbacks: list = [writer, bar] if cfg.progress else [writer]
    return L.Trainer(
        **{
            "accelerator": cfg.accelerator,
            "devices": cfg.devices,
            "num_nodes": cfg.num_nodes,
            "strategy": cfg.strategy,
            "precision": resolve_precision(cfg),
            "logger": False,
            "callbacks": callbacks,
            "enable_progress_bar": cfg.progress,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "use_distributed_sampler": False,
            "inference_mode": True,
            **trainer_kwargs,
        }
    )
