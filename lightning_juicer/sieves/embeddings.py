"""Embeddings pass: image and text embeddings of a reference CLIP and/or the governor's CLS embedding, per shard.

The pass is the vision pass's machinery (``governor/vision_pass.py``) with another predictor and
writer: Lightning ``predict`` over whole shards per rank, one atomic ``<shard stem>.emb.parquet`` per
shard, finished shards skipped on a rerun, a merged manifest with per-shard counts. The reference
model is an open_clip model (name + pretrained tag or weights file, ``local-dir:<folder>``) or a
``.ckpt`` trained by this project; the governor is any ``governor.name`` the vision pass accepts.

File format (Parquet, rows in shard order): ``key`` string; ``image`` and ``text``
fixed_size_list<float16>[D] (L2-normalised reference embeddings, present when a reference is set);
``cls`` fixed_size_list<float16>[D'] (the governor's CLS embedding as it comes, present when a
governor is set). Schema metadata ``juicer.embeddings`` (JSON): format_version, shard (file name), shard_url,
reference, governor, dims, temperature (1 / the reference's logit scale), counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.keeplist import shard_ids
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.io.transforms import crop_transform
from lightning_juicer.io.sidecar import (
    SidecarInfo,
    _shard_name,
    governor_id,
    sidecar_path,
)
from lightning_juicer.governor.vision_pass import (
    MISMATCH_POLICIES,
    ShardBatches,
    ShardData,
    ShardJob,
    ShardProgressBar,
    SidecarWriter,
    check_outputs,
    pass_trainer,
    plan_jobs,
)

log = logging.getLogger(__name__)

SUFFIX = ".emb.parquet"
META = b"juicer.embeddings"
FORMAT_VERSION = 1
MANIFEST_NAME = "embeddings.manifest.json"
FIELDS = ("image", "text", "cls")


@dataclass
class EncoderConfig:
    """A model by name (``name: null`` = not used) and its weights."""

    name: str | None = None
    pretrained: Any = None


@dataclass
class EmbeddingsConfig:
    """Everything the embeddings pass reads from ``configs/preprocess/embeddings.yaml`` and the command line."""

    shards: Any = MISSING
    out_dir: str | None = None
    manifest: str | None = None
    on_mismatch: str = "error"
    reference: EncoderConfig = field(default_factory=EncoderConfig)
    governor: EncoderConfig = field(default_factory=lambda: EncoderConfig(None, True))
    batch_size: int = 256
    num_workers: int = 8
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    progress: bool = True


def to_config(cfg: EmbeddingsConfig | DictConfig | Mapping[str, Any]) -> EmbeddingsConfig:
    """A validated EmbeddingsConfig from a dataclass, an omegaconf config or a plain mapping."""
    merged = OmegaConf.merge(OmegaConf.structured(EmbeddingsConfig), cfg)
    if OmegaConf.is_missing(merged, "shards"):
        raise ConfigError("shards: no shards given; pass shards='/data/cc3m/{00000..00331}.tar'")
    out: EmbeddingsConfig = OmegaConf.to_object(merged)
    if not out.reference.name and not out.governor.name:
        raise ConfigError("reference.name: set a reference model (open_clip name or .ckpt) and/or governor.name")
    if out.on_mismatch not in MISMATCH_POLICIES:
        raise ConfigError(f"on_mismatch: {out.on_mismatch!r} is not one of {MISMATCH_POLICIES}")
    if out.batch_size < 1 or out.num_workers < 0:
        raise ConfigError("batch_size / num_workers: out of range")
    if isinstance(out.shards, (list, tuple)):
        out.shards = [str(s) for s in out.shards]
    return out


def embeddings_path(shard_url: str, out_dir: str | Path | None = None) -> Path:
    """Embeddings file of a shard: ``<stem>.emb.parquet`` in ``out_dir`` or next to a local shard."""
    sidecar = sidecar_path(shard_url, out_dir, key="out_dir")
    return sidecar.with_name(sidecar.name.replace(".juice.parquet", SUFFIX))


class Reference(NamedTuple):
    """A loaded reference CLIP: model, tokenizer, canonical name, preprocessing and temperature."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    temperature: float


def load_reference(cfg: EncoderConfig) -> Reference:
    """An open_clip model by name / local-dir, or the CLIP inside a ``.ckpt`` of this project."""
    name = str(cfg.name)
    if name.endswith(".ckpt"):  # read with weights_only=True; the model is built from its hyper-parameters
        from lightning_juicer.models.checkpoint import load_lightning_checkpoint
        from lightning_juicer.models.export import module_from_checkpoint

        module = module_from_checkpoint(load_lightning_checkpoint(name, "reference.name"), "reference.name")
        model, tokenizer = module.model, module.tokenizer
    else:
        from lightning_juicer.models.factory import create_clip_model

        model = create_clip_model(name, None, cfg.pretrained or None)
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


class Encoders(NamedTuple):
    """What the pass runs: the reference (or None), the governor scorer (or None) and their identity."""

    reference: Reference | None
    scorer: Any
    identity: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        """Size the workers crop to: the reference's, else the governor's."""
        return self.reference.image_size if self.reference else tuple(self.scorer.image_size)

    @property
    def interpolation(self) -> str:
        """Resize interpolation of the model that sets the crop size."""
        return self.reference.interpolation if self.reference else self.scorer.interpolation


def load_encoders(cfg: EmbeddingsConfig) -> Encoders:
    """Load the reference and/or governor and describe them (stored in every file, checked on resume)."""
    reference = load_reference(cfg.reference) if cfg.reference.name else None
    scorer = load_governor(cfg.governor.name, cfg.governor.pretrained) if cfg.governor.name else None
    identity = {
        "reference": reference.name if reference else None,
        "reference_pretrained": None if cfg.reference.pretrained is None else str(cfg.reference.pretrained),
        "governor": governor_id(cfg.governor.name) if scorer is not None else None,
    }
    return Encoders(reference, scorer, identity)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


class EmbeddingPredictor(L.LightningModule):
    """uint8 images (+ captions) -> normalised reference image/text embeddings and the governor's CLS embedding."""

    def __init__(self, encoders: Encoders) -> None:
        super().__init__()
        self.encoders = encoders
        self.clip = encoders.reference.model if encoders.reference else None
        self.scorer = encoders.scorer

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Embeddings [B, D] per requested field (empty tensors for an empty batch)."""
        images = batch["image"].float() / 255
        out: dict[str, torch.Tensor] = {}
        ref, scorer = self.encoders.reference, self.scorer
        if ref is not None:
            if len(images) == 0:
                dim = int(self.clip.visual.output_dim)
                out["image"], out["text"] = torch.empty(0, dim), torch.empty(0, dim)
            else:
                x = _normalise(_resize(images, ref.image_size), ref.mean, ref.std)
                out["image"] = F.normalize(self.clip.encode_image(x).float(), dim=-1)
                tokens = ref.tokenizer(batch["caption"]).to(self.device)
                out["text"] = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        if scorer is not None:
            if len(images) == 0:
                out["cls"] = torch.empty(0, scorer.embed_dim)
            else:
                x = _normalise(_resize(images, scorer.image_size), scorer.mean, scorer.std)
                out["cls"] = scorer(x).cls.float()
        return out


def _fixed_list(values: np.ndarray) -> pa.Array:
    n, d = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float16).ravel(), type=pa.float16())
    return pa.FixedSizeListArray.from_arrays(flat, d) if n or d else pa.array([], pa.list_(pa.float16(), 0))


def write_embeddings(
    path: str | Path, keys: list[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write one shard's embeddings atomically (float16 fixed-size lists, metadata as JSON)."""
    columns = {"key": pa.array(list(keys), type=pa.string())}
    dims = {}
    for name in FIELDS:
        if name in arrays:
            values = np.asarray(arrays[name], dtype=np.float32).reshape(len(keys), -1)
            columns[name] = _fixed_list(values)
            dims[name] = values.shape[1]
    table = pa.table(columns).replace_schema_metadata({META: json.dumps({**meta, "dims": dims}).encode()})
    return atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def embeddings_meta(path: str | Path) -> tuple[dict[str, Any], int]:
    """The metadata and row count of an embeddings file (footer only)."""
    try:
        footer = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"embeddings file {path} cannot be read: {' '.join(str(e).split())}") from e
    raw = (footer.schema.to_arrow_schema().metadata or {}).get(META)
    if raw is None:
        raise ConfigError(f"embeddings file {path} has no juicer.embeddings metadata: not written by the embeddings pass")
    return json.loads(raw), footer.num_rows


class EmbeddingShards(ShardData):
    """The vision pass's shard plan, checking finished embeddings files instead of sidecars."""

    def finished(self, job: ShardJob) -> SidecarInfo | None:
        """The shard's embeddings file if it exists with the same encoders; None to (re)compute."""
        if not job.sidecar.is_file():
            return None
        meta, rows = embeddings_meta(job.sidecar)
        stored = {k: meta.get(k) for k in self.governor.identity}
        if stored != self.governor.identity:
            message = (f"embeddings file {job.sidecar} was written with {stored}; the config asks for "
                       f"{self.governor.identity}: delete it, use another out_dir or set on_mismatch=overwrite")
            if self.cfg.on_mismatch != "overwrite":
                raise ConfigError(f"reference.name: {message}")
            log.warning("embeddings pass: recomputing: %s", message)
            return None
        return SidecarInfo(job.sidecar, FORMAT_VERSION, "", {}, (0, 0), rows, {"counts": meta.get("counts")})

    def dataset(self) -> ShardBatches:
        """Pending shards as uint8 batches at the reference's (else the governor's) size, with captions."""
        enc: Encoders = self.governor
        transform = crop_transform(enc.image_size, enc.interpolation)
        return ShardBatches(self.plan.pending, transform, self.cfg.batch_size, enc.image_size,
                            captions=enc.reference is not None)


class EmbeddingWriter(SidecarWriter):
    """The sidecar writer's per-shard collection and manifest, writing embeddings files."""

    def _finish(self, job: ShardJob, shard: Any, batch: dict, rank: int) -> None:
        counts = {"in": batch["counts"]["in"], "written": len(shard.keys), "skipped": batch["counts"]["skipped"]}
        if batch["error"]:
            log.error("embeddings pass: shard %s could not be read to its end (%s); no file written", job.url,
                      batch["error"])
            self._record(job, "failed", rank, error=batch["error"], **{**counts, "written": 0})
            return
        enc: Encoders = self.governor
        arrays = {name: np.concatenate([p[name] for p in shard.parts]) for name in shard.parts[0]} if shard.parts else {}
        meta = {
            "format_version": FORMAT_VERSION,
            "shard": _shard_name(job.url),
            "shard_url": job.url,
            **enc.identity,
            "temperature": enc.reference.temperature if enc.reference else None,
            "counts": counts,
        }
        write_embeddings(job.sidecar, shard.keys, arrays, meta)
        self._scored += len(shard.keys)
        self._record(job, "written", rank, **counts)


class EmbeddingsProgressBar(ShardProgressBar):
    """The shard progress bar, labelled for this pass."""

    @property
    def predict_description(self) -> str:
        """The bar's label."""
        return "Embeddings pass"


def plan_embedding_jobs(cfg: EmbeddingsConfig) -> list[ShardJob]:
    """The pass's shards with their embeddings file paths and sizes."""
    return plan_jobs(cfg.shards, lambda url: embeddings_path(url, cfg.out_dir), "out_dir", "embeddings file")


def run_embeddings_pass(cfg: EmbeddingsConfig | DictConfig | Mapping[str, Any], **trainer_kwargs: Any) -> dict | None:
    """Run the pass; returns the merged manifest on global rank 0 (None on other ranks)."""
    cfg = to_config(cfg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    jobs = plan_embedding_jobs(cfg)
    manifest = Path(cfg.manifest) if cfg.manifest else jobs[0].sidecar.parent / MANIFEST_NAME
    check_outputs([job.sidecar for job in jobs], "out_dir", manifest)
    encoders = load_encoders(cfg)
    data = EmbeddingShards(jobs, encoders, cfg)
    if cfg.on_mismatch == "error":
        for job in jobs:
            data.finished(job)
    header = {
        "format_version": FORMAT_VERSION,
        **encoders.identity,
        "manifest": str(manifest),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "started": started,
    }
    writer = EmbeddingWriter(jobs, encoders, manifest, header)
    trainer = pass_trainer(cfg, writer, EmbeddingsProgressBar(), **trainer_kwargs)
    trainer.predict(EmbeddingPredictor(encoders), datamodule=data, return_predictions=False)
    if trainer.is_global_zero and manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8"))
    return None


@dataclass
class EmbeddingSet:
    """Embeddings of many shards in memory: keys, each key's shard identity (``keeplist.shard_ids``), float32
    arrays per field, metadata."""

    keys: list[str]
    shards: list[str]
    arrays: dict[str, np.ndarray]
    temperature: float | None
    files: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def read_embeddings(paths: list[str | Path]) -> EmbeddingSet:
    """Load embeddings files (all must hold the same fields) into one EmbeddingSet."""
    if not paths:
        raise ConfigError("embeddings: no embeddings files given; run preprocess/embeddings.py first")
    keys: list[str] = []
    shard_urls: list[str] = []
    rows_per_file: list[int] = []
    parts: dict[str, list[np.ndarray]] = {}
    temperature, fields = None, None
    for path in paths:
        meta, _ = embeddings_meta(path)
        table = pq.read_table(path)
        names = tuple(n for n in FIELDS if n in table.column_names)
        if fields is None:
            fields = names
        elif names != fields:
            raise ConfigError(f"embeddings: {path} holds {names}, the first file holds {fields}; rerun the pass")
        temperature = meta.get("temperature") if temperature is None else temperature
        rows = table.num_rows
        keys.extend(table.column("key").to_pylist())
        shard_urls.append(meta.get("shard_url") or meta.get("shard") or Path(path).name)
        rows_per_file.append(rows)
        for name in names:
            column = table.column(name).combine_chunks()
            dim = column.type.list_size if rows else meta["dims"][name]
            parts.setdefault(name, []).append(column.flatten().to_numpy(zero_copy_only=False).reshape(rows, dim))
    ids = shard_ids(shard_urls, unique="embeddings")
    shards = [ident for ident, rows in zip(ids, rows_per_file) for _ in range(rows)]
    arrays = {name: np.concatenate(p).astype(np.float32) for name, p in parts.items()}
    return EmbeddingSet(keys, shards, arrays, temperature, [str(p) for p in paths])
