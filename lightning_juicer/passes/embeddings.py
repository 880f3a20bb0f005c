"""The embeddings pass: a reference CLIP's image and text embeddings and/or the governor's CLS embedding, per shard.

    python -m lightning_juicer embeddings --config configs/preprocess/embeddings.yaml \\
        --shards 'data/synthetic/train/{00000..00007}.tar' --reference.name runs/ref/version_0/checkpoints/last.ckpt

One ``<shard stem>.emb.parquet`` per shard (format: :mod:`lightning_juicer.io.embeddings`), for the
sample-level sieves. The reference is loaded by :mod:`lightning_juicer.models.reference`; the
governor is any ``governor.name`` the vision pass accepts (its class head is not used). A finished
file written with the same models is skipped; one written with other models is refused
(``on_mismatch=error``) or recomputed (``overwrite``). Samples without an image or a caption (when
a reference embeds captions) are counted skips. Run machinery: :mod:`lightning_juicer.passes.base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.governor.settings import GovernorSettings
from lightning_juicer.io.embeddings import FORMAT_VERSION, embeddings_meta, embeddings_path, write_embeddings
from lightning_juicer.io.sidecar import governor_id, shard_name
from lightning_juicer.models.reference import Reference, ReferenceSettings, load_reference
from lightning_juicer.passes.base import OpenShard, ShardPass, pass_command
from lightning_juicer.passes.config import PassSettings, to_settings
from lightning_juicer.passes.reader import ShardBatches, ShardJob, crop_transform

PROG = "python -m lightning_juicer embeddings"


@dataclass
class EmbeddingsSettings(PassSettings):
    """The embeddings pass: reference CLIP image/text embeddings and/or governor CLS embeddings, one file per shard.

    Args:
        out_dir: null: each <stem>.emb.parquet next to its shard (required for remote shards).
        reference: image + text embeddings (L2-normalised) and the temperature for negCLIPLoss.
        governor: the governor's CLS embedding (column cls), e.g. for SemDeDup on a vision-only model; null: none.
    """

    out_dir: str | None = None
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    governor: GovernorSettings | None = None

    def check(self) -> None:
        super().check()
        if not self.reference.name and not self.governor_name:
            raise ConfigError("reference.name: set a reference model (open_clip name or .ckpt) and/or governor.name")

    @property
    def governor_name(self) -> str | None:
        """The governor's name, None when no governor embedding is asked for."""
        return self.governor.name if self.governor is not None else None


def embeddings_settings(value: EmbeddingsSettings | Mapping[str, Any]) -> EmbeddingsSettings:
    """Checked settings from an EmbeddingsSettings or a mapping shaped like ``configs/preprocess/embeddings.yaml``."""
    return to_settings(EmbeddingsSettings, value, PROG)


def _prepare(images: torch.Tensor, size: tuple[int, int], mean: tuple, std: tuple) -> torch.Tensor:
    """uint8-scaled [0, 1] images resized to ``size`` (if needed) and normalised."""
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return (images - images.new_tensor(mean).view(1, -1, 1, 1)) / images.new_tensor(std).view(1, -1, 1, 1)


class EmbeddingPredictor(L.LightningModule):
    """uint8 images (+ captions) -> normalised reference image/text embeddings and the governor's CLS embedding."""

    def __init__(self, reference: Reference | None, scorer: PatchScorer | None) -> None:
        super().__init__()
        self.reference = reference
        self.clip = reference.model if reference is not None else None
        self.scorer = scorer

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Embeddings [B, D] per requested field (empty tensors for an empty batch)."""
        images = batch["image"].float() / 255
        out: dict[str, torch.Tensor] = {}
        ref, scorer = self.reference, self.scorer
        if ref is not None:
            if len(images) == 0:
                dim = int(self.clip.visual.output_dim)
                out["image"], out["text"] = torch.empty(0, dim), torch.empty(0, dim)
            else:
                x = _prepare(images, ref.image_size, ref.mean, ref.std)
                out["image"] = F.normalize(self.clip.encode_image(x).float(), dim=-1)
                tokens = ref.tokenizer(batch["caption"]).to(self.device)
                out["text"] = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        if scorer is not None:
            if len(images) == 0:
                out["cls"] = torch.empty(0, scorer.embed_dim)
            else:
                out["cls"] = scorer(_prepare(images, scorer.image_size, scorer.mean, scorer.std)).cls.float()
        return out


class EmbeddingsPass(ShardPass[EmbeddingsSettings]):
    """Reference and/or governor embeddings -> ``<shard stem>.emb.parquet`` files."""

    settings_type = EmbeddingsSettings
    label = "embeddings pass"
    manifest_name = "embeddings.manifest.json"
    output_key = "out_dir"
    output_what = "embeddings file"
    written = "in embeddings files"
    reference: Reference | None
    scorer: PatchScorer | None
    identity: dict[str, Any]

    def output_path(self, url: str) -> Path:
        return embeddings_path(url, self.settings.out_dir)

    def load_models(self) -> None:
        s = self.settings
        self.reference = load_reference(s.reference) if s.reference.name else None
        self.scorer = load_governor(s.governor.name, s.governor.pretrained) if s.governor_name else None
        self.identity = {  # stored in every file, compared on resume
            "reference": self.reference.name if self.reference else None,
            "reference_pretrained": None if s.reference.pretrained is None else str(s.reference.pretrained),
            "governor": governor_id(s.governor_name) if self.scorer is not None else None,
        }

    def header(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **self.identity}

    def existing(self, job: ShardJob) -> dict[str, Any] | None:
        if not job.output.is_file():
            return None
        meta, rows = embeddings_meta(job.output)
        stored = {k: meta.get(k) for k in self.identity}
        if stored != self.identity:
            return self.mismatched(ConfigError(
                f"reference.name: embeddings file {job.output} was written with {stored}; the config asks for "
                f"{self.identity}: delete it, use another out_dir or set --on_mismatch overwrite"))
        return meta.get("counts") or {"in": rows, "written": rows, "skipped": {}}

    def dataset_for(self, jobs: list[ShardJob]) -> ShardBatches:
        """Pending shards as uint8 batches at the reference's (else the governor's) size, with captions."""
        ref, scorer = self.reference, self.scorer
        size = ref.image_size if ref else tuple(scorer.image_size)
        transform = crop_transform(size, ref.interpolation if ref else scorer.interpolation)
        return ShardBatches(jobs, transform, self.settings.batch_size, size, captions=ref is not None)

    def predictor(self) -> EmbeddingPredictor:
        return EmbeddingPredictor(self.reference, self.scorer)

    def finish_shard(self, job: ShardJob, shard: OpenShard, counts: dict[str, Any]) -> dict[str, Any]:
        meta = {
            "format_version": FORMAT_VERSION,
            "shard": shard_name(job.url),
            "shard_url": job.url,
            **self.identity,
            "temperature": self.reference.temperature if self.reference else None,
            "counts": counts,
        }
        write_embeddings(job.output, shard.keys, shard.arrays(), meta)
        return counts


def run_embeddings_pass(settings: EmbeddingsSettings | Mapping[str, Any], **trainer_kwargs: Any) -> dict | None:
    """Run the pass; returns the merged manifest on global rank 0 (None on other ranks)."""
    return EmbeddingsPass(embeddings_settings(settings)).run(**trainer_kwargs)


def main(argv: list[str]) -> dict | None:
    """``python -m lightning_juicer embeddings --config configs/preprocess/embeddings.yaml --shards ...``."""
    return pass_command(EmbeddingsPass, argv, PROG, __doc__)
