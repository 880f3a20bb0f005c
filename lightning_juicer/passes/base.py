"""The shard-pass framework: one class every offline pass (vision, text, embeddings) subclasses.

**What a pass is.** A function from each input shard to one output file (a sidecar, an embeddings
file), computed by a model over the shard's samples. :class:`ShardPass` runs it with Lightning's
``Trainer.predict``, so one code path serves CPU, one GPU, several GPUs and nodes under every
launcher Lightning supports, with autocast from ``precision``; nothing distributed is hand-written.

**Shards, not samplers.** Rank r takes the shards ``r::world`` (:class:`ShardData`); each DataLoader
worker takes whole shards of its rank and yields them as batches within the shard, the last one
flagged. :class:`ShardWriter` (a ``BasePredictionWriter``) collects a shard's predictions and calls
the pass's ``finish_shard`` the moment its last batch arrives; the pass writes the file atomically
(``io.atomic.atomic_write``: temporary sibling, fsync, ``os.replace``), so a file that exists is
complete. No collective runs per batch; one barrier at the end lets rank 0 merge the manifest.

**Resume.** ``existing(job)`` tells a finished output (skipped, reported ``existing``) from one to
compute; an output written with other models or settings is refused at start-up
(``on_mismatch=error``) or recomputed (``overwrite``): call :meth:`ShardPass.mismatched`.

**Hooks** (see :mod:`lightning_juicer.passes.vision` for a complete pass in ~200 lines):
``settings_type``, ``output_path(url)``, ``load_models()``, ``header()``, ``existing(job)``,
``dataset_for(jobs)``, ``predictor()`` (a LightningModule with ``predict_step``),
``keep(batch, prediction)`` (what of a batch to hold until its shard is complete) and
``finish_shard(job, shard, counts)`` (write the file, return the manifest fields);
``plan()`` when a job needs more than its output path; ``on_device(device)`` to learn the rank's device
before the data is read. A prediction (a dict) may carry ``SKIPPED``, ``{row: reason}`` for samples the
model side could not process (e.g. an image the GPU decoder refused): the writer drops those rows and
counts them with the reader's skips.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections import Counter
from abc import ABC, abstractmethod
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset

from lightning_juicer.errors import ConfigError
from lightning_juicer.outputs import check_writable, check_writable_parents
from lightning_juicer.passes.config import PassSettings, parse_argv
from lightning_juicer.passes.manifest import ManifestTotals, RankLines, merge_manifests, summary
from lightning_juicer.passes.trainer import pass_trainer
from lightning_juicer.passes.reader import ShardJob, count_skip, plan_jobs

log = logging.getLogger(__name__)
S = TypeVar("S", bound=PassSettings)
# Shards, not a sampler, decide what each batch holds; the writer needs no sample indices.
warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")
SKIPPED = "skipped"  # a prediction's {row: reason} of samples dropped on the model side (counted skips)


class OpenShard:
    """A shard whose batches are still arriving: its keys and what ``ShardPass.keep`` held of each batch."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.parts: list[Any] = []

    def add(self, keys: list[str], part: Any) -> None:
        self.keys.extend(keys)
        self.parts.append(part)

    def arrays(self) -> dict[str, np.ndarray]:
        """The held arrays concatenated per name (parts are ``{name: ndarray}``, the default ``keep``)."""
        return {name: np.concatenate([part[name] for part in self.parts]) for name in (self.parts or [{}])[0]}


class ShardPass(ABC, Generic[S]):
    """One offline pass over shards: subclass, set the class attributes, implement the hooks, call ``run``."""

    settings_type: ClassVar[type[PassSettings]]
    label: ClassVar[str] = "pass"  # logs, progress
    manifest_name: ClassVar[str] = "pass.manifest.json"
    output_key: ClassVar[str] = "out_dir"  # the settings key naming the output folder, for error messages
    output_what: ClassVar[str] = "output file"
    written: ClassVar[str] = "written"  # the summary's word for the samples stored
    totals: ClassVar[ManifestTotals] = ManifestTotals()

    def __init__(self, settings: S) -> None:
        self.settings = settings

    # -- hooks -------------------------------------------------------------------------------------------
    @abstractmethod
    def output_path(self, url: str) -> Path:
        """The output file of a shard."""

    def plan(self) -> list[ShardJob]:
        """The shards with their output files and sizes (override when a job needs more)."""
        return plan_jobs(self.settings.shards, self.output_path, self.output_key, self.output_what)

    @abstractmethod
    def load_models(self) -> None:
        """Load what the pass runs (after this, ``existing`` and ``header`` can describe it)."""

    def header(self) -> dict[str, Any]:
        """What the merged manifest records about the models and settings (besides the config)."""
        return {}

    def config_record(self) -> dict[str, Any]:
        """The settings as the manifest's ``config`` (JSON); override if a field is not a plain value or dataclass."""
        return asdict(self.settings)

    @abstractmethod
    def existing(self, job: ShardJob) -> dict[str, Any] | None:
        """The manifest fields of the shard's finished output, or None when it must be (re)computed."""

    @abstractmethod
    def dataset_for(self, jobs: list[ShardJob]) -> IterableDataset:
        """The pending shards as batches ``{shard, key, last, counts, error, ...}`` (see ``reader.shard_batches``)."""

    @abstractmethod
    def predictor(self) -> L.LightningModule:
        """The module whose ``predict_step`` turns a batch into the prediction ``keep`` receives."""

    def on_device(self, device: Any) -> None:
        """The device this rank runs on, known before ``dataset_for`` is called (default: nothing to do)."""

    def keep(self, batch: dict, prediction: Any) -> Any:
        """What of one batch's prediction to hold until its shard is complete (default: tensors as numpy)."""
        return {name: value.detach().cpu().numpy() for name, value in prediction.items()}

    @abstractmethod
    def finish_shard(self, job: ShardJob, shard: OpenShard, counts: dict[str, Any]) -> dict[str, Any]:
        """Write a complete shard's output atomically; return its manifest fields (``counts`` and any more)."""

    # -- helpers -----------------------------------------------------------------------------------------
    def mismatched(self, error: ConfigError) -> None:
        """An output written with other models or settings: raise ``error`` unless ``on_mismatch=overwrite``."""
        if self.settings.on_mismatch != "overwrite":
            raise error
        log.warning("%s: recomputing: %s", self.label, error)

    def describe(self, manifest: dict[str, Any]) -> str:
        """The summary the command prints."""
        return summary(manifest, self.written, self.totals.rate)

    def scored(self, shard: OpenShard) -> int:
        """How many samples of a finished shard the model ran on (the run's speed figure counts these)."""
        return len(shard.keys)

    def run(self, **trainer_kwargs: Any) -> dict[str, Any] | None:
        """Run the pass; returns the merged manifest on global rank 0 (None on other ranks)."""
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        jobs = self.plan()
        manifest = Path(self.settings.manifest) if self.settings.manifest else jobs[0].output.parent / self.manifest_name
        check_writable_parents([job.output for job in jobs], self.output_key)
        check_writable(manifest.parent, "manifest")
        self.load_models()
        if self.settings.on_mismatch == "error":  # refuse before any work, not when a rank reaches the shard
            for job in jobs:
                self.existing(job)
        header = {**self.header(), "manifest": str(manifest), "config": self.config_record(), "started": started}
        writer = ShardWriter(self, jobs, manifest, header)
        trainer = pass_trainer(self.settings, self.label, [writer], **trainer_kwargs)
        trainer.predict(self.predictor(), datamodule=ShardData(self, jobs), return_predictions=False)
        if trainer.is_global_zero and manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8"))
        return None


class ShardData(L.LightningDataModule):
    """Gives rank r the shards r::world whose outputs are not finished yet, whole shards per worker."""

    def __init__(self, shard_pass: ShardPass, jobs: list[ShardJob]) -> None:
        super().__init__()
        self.shard_pass = shard_pass
        self.jobs = jobs
        self.pending: list[ShardJob] = []
        self.existing: list[tuple[ShardJob, dict[str, Any]]] = []

    def setup(self, stage: str) -> None:
        """Split the shards over ranks; keep this rank's finished outputs, clear stale temporary files."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        self.shard_pass.on_device(self.trainer.strategy.root_device)
        self.pending, self.existing = [], []
        for job in self.jobs[rank::world]:
            fields = self.shard_pass.existing(job)
            if fields is None:
                for stale in job.output.parent.glob(f"{job.output.name}.tmp-*"):
                    stale.unlink(missing_ok=True)
                self.pending.append(job)
            else:
                self.existing.append((job, fields))

    @property
    def num_batches(self) -> int | None:
        """Batches this rank will run, when every pending shard's size is known (for progress)."""
        sizes = [job.size for job in self.pending]
        if any(s is None for s in sizes):
            return None
        return sum(max(1, math.ceil(s / self.shard_pass.settings.batch_size)) for s in sizes)

    def predict_dataloader(self) -> DataLoader:
        """Reading and decoding in workers; each worker takes whole shards."""
        return DataLoader(
            self.shard_pass.dataset_for(self.pending),
            batch_size=None,
            num_workers=min(self.shard_pass.settings.num_workers, len(self.pending)),
            pin_memory=self.trainer.strategy.root_device.type == "cuda",
        )


class ShardWriter(BasePredictionWriter):
    """Collects each shard's batches and has the pass write its output when the shard's last batch arrives."""

    def __init__(self, shard_pass: ShardPass, jobs: list[ShardJob], manifest: Path, header: dict[str, Any]) -> None:
        super().__init__(write_interval="batch")
        self.shard_pass = shard_pass
        self.jobs = {job.index: job for job in jobs}
        self.manifest = manifest
        self.header = header
        self.open: dict[int, OpenShard] = {}
        self.dropped: dict[int, Counter[str]] = {}  # per open shard: samples dropped on the model side
        self.lines: RankLines | None = None
        self.start = 0.0
        self.scored = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Start this rank's manifest lines with the shards whose outputs were already finished."""
        self.lines = RankLines(self.manifest, trainer.global_rank)
        self.start = time.perf_counter()
        for job, fields in trainer.datamodule.existing:
            self.record(job, "existing", fields)

    def record(self, job: ShardJob, status: str, fields: dict[str, Any]) -> None:
        self.lines.record({"index": job.index, "shard": job.url, "output": str(job.output), "status": status,
                           **fields})

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Add a batch to its shard (less the rows the prediction skipped); finish the shard at its last batch."""
        skipped = prediction.pop(SKIPPED, None) if isinstance(prediction, dict) else None
        keys, part = batch["key"], self.shard_pass.keep(batch, prediction)
        if skipped:
            job, dropped = self.jobs[batch["shard"]], self.dropped.setdefault(batch["shard"], Counter())
            for row, reason in sorted(skipped.items()):
                count_skip(dropped, reason, keys[row], job.url)
            rows = [i for i in range(len(keys)) if i not in skipped]
            keys, part = [keys[i] for i in rows], {name: value[rows] for name, value in part.items()}
        self.open.setdefault(batch["shard"], OpenShard()).add(keys, part)
        if batch["last"]:
            self.finish(self.jobs[batch["shard"]], self.open.pop(batch["shard"]), batch)

    def finish(self, job: ShardJob, shard: OpenShard, batch: dict) -> None:
        skipped = Counter(batch["counts"]["skipped"]) + self.dropped.pop(job.index, Counter())
        counts = {"in": batch["counts"]["in"], "written": len(shard.keys), "skipped": dict(sorted(skipped.items()))}
        if batch["error"]:
            log.error("%s: shard %s could not be read to its end (%s); no output written", self.shard_pass.label,
                      job.url, batch["error"])
            self.record(job, "failed", {**counts, "written": 0, "error": batch["error"]})
            return
        fields = self.shard_pass.finish_shard(job, shard, counts)
        self.scored += self.shard_pass.scored(shard)
        self.record(job, "written", fields)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close this rank's manifest lines; after a barrier, rank 0 merges all ranks into the manifest."""
        self.lines.close(time.perf_counter() - self.start, self.scored)
        trainer.strategy.barrier("shard_pass_manifest")
        if trainer.is_global_zero:
            merge_manifests(self.manifest, trainer.world_size, self.header, self.shard_pass.totals)


def pass_command(pass_type: type[ShardPass], argv: list[str], prog: str, doc: str | None = None) -> dict | None:
    """A pass's command: parse ``argv`` (``--config``, ``--key value``), run, print the summary; exit 1 if a shard
    failed (a rerun retries it)."""
    description = (doc or pass_type.settings_type.__doc__ or "").strip().split("\n\n")[0]
    shard_pass = pass_type(parse_argv(pass_type.settings_type, argv, prog, description))
    manifest = shard_pass.run()
    if manifest is not None:
        print(shard_pass.describe(manifest))
        if manifest["totals"]["shards_failed"]:
            raise SystemExit(1)
    return manifest
