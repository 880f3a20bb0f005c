"""Text pass: every caption of every shard rewritten by the text governor with its visual evidence.

It reads each shard's captions and its vision sidecar (the class evidence C': stored classes with
p > ε, at most N), asks the backend for the juiced caption, validates every output and writes the
result into the sidecar's ``caption`` column: in place, or into a copy in ``output_dir`` (to keep
several caption versions, e.g. for the rules / concat / LLM ablation, next to one vision pass).

It is the vision pass's machinery (``governor/vision_pass.py``) with a text predictor: Lightning
``predict`` over whole shards per rank (``r::world``) and per DataLoader worker, one atomic sidecar
write per finished shard, the same progress bar and per-rank manifest lines merged by rank 0.

**Resuming.** A target sidecar whose ``juicer.text`` metadata records the same text settings (backend,
its settings, validation, evidence filter) is finished and skipped (``existing``); one written with
other text settings is refused (``on_mismatch=error``) or recomputed (``overwrite``).

**Counts per shard.** ``rewritten`` (accepted and different from the original), ``unchanged``,
``fallback`` by reason (the output was rejected, or the input was not sent: the original caption is
stored; reasons in ``validation.py``), ``evidence_added`` (per class: evidence classes an accepted
caption names that its original did not) and ``skipped`` by reason (no usable caption: nothing
stored, training uses the original, counted there; ``bad_key``: a tar member without a webdataset
key). A shard without a vision sidecar, or that cannot be read to its end, ``failed``.

**Class vocabulary.** ``invented_object`` needs the evidence head's classes: ``validation.classnames``,
else the vision sidecars' ``head.classnames`` setting, else every class the shard's sidecar stores.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import MISSING, DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lightning_juicer.io.shards import expand_shards
from lightning_juicer.errors import ConfigError
from lightning_juicer.io.sidecar import (
    SidecarInfo,
    read_sidecar,
    sidecar_info,
    sidecar_path,
    write_sidecar,
)
from lightning_juicer.governor.vision_pass import (
    MISMATCH_POLICIES,
    RankPlan,
    check_outputs,
    ShardData,
    ShardProgressBar,
    SidecarWriter,
    shard_sizes,
)
from lightning_juicer.text.backends import BACKENDS, BackendContext, TextBackend
from lightning_juicer.text.prompts import PromptConfig, Request
from lightning_juicer.text.shard_captions import CaptionBatches, TextJob
from lightning_juicer.text.validation import ValidationConfig, Validator, evidence_woven

log = logging.getLogger(__name__)

MANIFEST_NAME = "text_pass.manifest.json"


@dataclass
class TextPassConfig:
    """Everything the text pass reads from ``configs/preprocess/text.yaml`` and the command line."""

    shards: Any = MISSING
    sidecar_dir: str | None = None
    output_dir: str | None = None
    manifest: str | None = None
    on_mismatch: str = "error"
    backend: Any = "transformers"  # a registered name or {class_path: ..., init_args: {...}}
    prompts: PromptConfig = field(default_factory=PromptConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    threshold: float | None = None
    max_classes: int | None = None
    batch_size: int = 64
    num_workers: int = 2
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    progress: bool = True


def to_config(cfg: TextPassConfig | DictConfig | Mapping[str, Any]) -> TextPassConfig:
    """A validated TextPassConfig from a dataclass, an omegaconf config or a plain mapping."""
    merged = OmegaConf.merge(OmegaConf.structured(TextPassConfig), cfg)
    if OmegaConf.is_missing(merged, "shards"):
        raise ConfigError("shards: no shards given; pass shards='/data/cc3m/{00000..00331}.tar'")
    out: TextPassConfig = OmegaConf.to_object(merged)
    if out.on_mismatch not in MISMATCH_POLICIES:
        raise ConfigError(f"on_mismatch: {out.on_mismatch!r} is not one of {MISMATCH_POLICIES}")
    if out.batch_size < 1 or out.num_workers < 0:
        raise ConfigError(f"batch_size / num_workers: {out.batch_size} / {out.num_workers} are out of range")
    if out.threshold is not None and not 0.0 <= out.threshold < 1.0:
        raise ConfigError(f"threshold: {out.threshold} is outside [0, 1)")
    if isinstance(out.shards, (list, tuple)):
        out.shards = [str(s) for s in out.shards]
    return out


def plan_shards(cfg: TextPassConfig) -> list[TextJob]:
    """The job's shards with their vision sidecars, target sidecars and sizes."""
    urls = expand_shards(cfg.shards, "shards")
    jobs, seen = [], {}
    for index, (url, size) in enumerate(zip(urls, shard_sizes(urls))):
        source = sidecar_path(url, cfg.sidecar_dir)
        target = sidecar_path(url, cfg.output_dir) if cfg.output_dir else source
        if target in seen:
            raise ConfigError(f"output_dir: shards {seen[target]} and {url} would share the sidecar {target}")
        seen[target] = url
        jobs.append(TextJob(index, url, target, size, source))
    if not any(job.source.is_file() for job in jobs):
        raise ConfigError(f"sidecar_dir: no vision sidecars found (looked for {jobs[0].source}); run "
                          "preprocess/vision_pass.py first or point sidecar_dir at its sidecars")
    return jobs


def build_backend(spec: Any) -> TextBackend:
    """The configured backend: a registered name (default settings) or ``{class_path, init_args}`` (jsonargparse)."""
    if isinstance(spec, Mapping):
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--backend", type=TextBackend)
        try:
            spec = parser.instantiate_classes(parser.parse_object({"backend": dict(spec)})).backend
        except Exception as e:  # jsonargparse's nested report, as one line
            raise ConfigError(f"backend: {' '.join(str(e).split())[:400]}") from e
    return BACKENDS.build(spec, "backend")


def text_settings(cfg: TextPassConfig, backend: TextBackend) -> dict[str, Any]:
    """What changes the stored captions: backend and its settings, validation and the evidence filter."""
    return {"backend": backend.name, "backend_settings": backend.settings, "validation": asdict(cfg.validation),
            "threshold": cfg.threshold, "max_classes": cfg.max_classes}


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a, sort_keys=True)) == json.loads(json.dumps(b, sort_keys=True))


def finished_sidecar(job: TextJob, settings: dict[str, Any], on_mismatch: str) -> SidecarInfo | None:
    """The target sidecar if the pass finished it with these settings; ConfigError on a refused mismatch."""
    if not job.sidecar.is_file():
        return None
    info = sidecar_info(job.sidecar)
    text = info.extra.get("text")
    if text is None:
        return None
    if _same(text.get("settings"), settings):
        return info
    message = (f"backend: sidecar {job.sidecar} holds captions written with other text settings "
               f"({text.get('settings', {}).get('backend')}); delete it, set on_mismatch=overwrite, "
               "use another output_dir, or fix the config")
    if on_mismatch != "overwrite":
        raise ConfigError(message)
    log.warning("text pass: recomputing %s", job.sidecar)
    return None


class TextShardData(ShardData):
    """Gives rank r the shards r::world whose text sidecars are not finished yet."""

    def __init__(self, jobs: list[TextJob], settings: dict[str, Any], cfg: TextPassConfig) -> None:
        L.LightningDataModule.__init__(self)
        self.jobs = jobs
        self.settings = settings
        self.cfg = cfg
        self.plan = RankPlan([], [])

    def finished(self, job: TextJob) -> SidecarInfo | None:
        """The shard's sidecar when its captions were written with these text settings, else None."""
        return finished_sidecar(job, self.settings, self.cfg.on_mismatch)

    def predict_dataloader(self) -> DataLoader:
        """Shard reading in workers; batches of captions and evidence, one shard at a time per worker."""
        dataset = CaptionBatches(self.plan.pending, self.cfg.batch_size, self.cfg.threshold, self.cfg.max_classes)
        return DataLoader(dataset, batch_size=None, num_workers=min(self.cfg.num_workers, len(self.plan.pending)))


class TextPredictor(L.LightningModule):
    """Sends a batch's usable captions to the backend and validates every output."""

    def __init__(self, backend: TextBackend, validator: Validator) -> None:
        super().__init__()
        self.backend = backend
        self.validator = validator
        self.llm = backend.module  # registered so that Lightning moves it to the device
        self.sent = 0

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, list]:
        """``caption`` (the juiced caption, the original on a fallback, None when skipped) and ``status`` per sample."""
        captions: list[str | None] = list(batch["caption"])
        status = ["skipped"] * len(captions)
        requests, where = [], []
        for i, (caption, evidence) in enumerate(zip(batch["caption"], batch["evidence"])):
            if caption is None:
                continue
            reason = self.validator.check_input(caption)
            if reason is None:
                requests.append(Request(caption, [(str(c), float(p)) for c, p in evidence]))
                where.append(i)
            else:
                status[i] = f"fallback:{reason}"
                captions[i] = caption if reason != "empty_input" else None
        try:
            outputs = self.backend.rewrite(requests)
        except Exception as exn:  # one bad batch must not stop the pass: its samples keep their captions
            log.error("text pass: backend %s failed on a batch of shard %s: %r", self.backend.name, batch["shard"], exn)
            outputs = [""] * len(requests)
            failed = True
        else:
            failed = False
        self.sent += len(requests)
        woven: list[list[str]] = [[] for _ in captions]
        for i, request, output in zip(where, requests, outputs):
            names = [name for name, _ in request.evidence]
            caption, reason = self.validator(request.caption, output, names, batch.get("classnames"))
            if failed:
                caption, reason = request.caption, "backend_error"
            captions[i] = caption
            if reason is not None:
                status[i] = f"fallback:{reason}"
            elif caption == " ".join(request.caption.split()):
                status[i] = "unchanged"
            else:
                status[i] = "rewritten"
                woven[i] = evidence_woven(request.caption, caption, names)
        return {"caption": captions, "status": status, "evidence_added": woven}


class TextSidecarWriter(SidecarWriter):
    """Collects each shard's juiced captions and writes its sidecar atomically when the shard is complete."""

    merge_options = {"numbers": ("rewritten", "unchanged"), "counters": ("fallback", "evidence_added"),
                     "rate": "captions_per_second"}

    def __init__(self, jobs: list[TextJob], settings: dict[str, Any], manifest: Path, header: dict[str, Any]) -> None:
        super().__init__(jobs, None, manifest, header)  # type: ignore[arg-type]
        self.settings = settings

    def existing_counts(self, info: SidecarInfo) -> dict[str, Any]:
        """The counts the text pass recorded in a finished sidecar."""
        return info.extra["text"].get("counts", {})

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        """Add a batch to its shard; write the shard's sidecar when this is its last batch."""
        shard = self._open.setdefault(batch["shard"], {})
        shard.update(zip(batch["key"], zip(prediction["caption"], prediction["status"], prediction["evidence_added"])))
        if batch["last"]:
            self._finish_text(self.jobs[batch["shard"]], self._open.pop(batch["shard"]), batch, pl_module,
                              trainer.global_rank)

    def _finish_text(self, job: TextJob, shard: dict, batch: dict, pl_module: TextPredictor, rank: int) -> None:
        status = Counter(s for _, s, _ in shard.values())
        added = Counter(name for _, _, names in shard.values() for name in names)
        counts = {
            "in": batch["counts"]["in"],
            "written": sum(caption is not None for caption, _, _ in shard.values()),
            "rewritten": status["rewritten"],
            "unchanged": status["unchanged"],
            "fallback": {s.split(":", 1)[1]: n for s, n in sorted(status.items()) if s.startswith("fallback:")},
            "evidence_added": dict(sorted(added.items())),
            "skipped": batch["counts"]["skipped"],
        }
        if batch["error"]:
            log.error("text pass: shard %s failed (%s); no sidecar written", job.url, batch["error"])
            self._record(job, "failed", rank, error=batch["error"], **{**counts, "written": 0})
            return
        table = read_sidecar(job.source)
        rows = table.rows()
        rows.captions = [shard[key][0] if key in shard else None for key in rows.keys]
        extra = {**table.extra, "text": {"settings": self.settings, "counts": counts}}
        write_sidecar(job.sidecar, rows, table.governor, table.settings, extra)
        self._scored = pl_module.sent
        self._record(job, "written", rank, **counts)


class TextProgressBar(ShardProgressBar):
    """The vision pass's bar, labelled for the text pass."""

    description = "Text pass"


def manifest_path(cfg: TextPassConfig, jobs: list[TextJob]) -> Path:
    """Where the merged manifest goes: ``manifest``, else next to the first written sidecar."""
    return Path(cfg.manifest) if cfg.manifest else jobs[0].sidecar.parent / MANIFEST_NAME


def run_text_pass(cfg: TextPassConfig | DictConfig | Mapping[str, Any], backend: TextBackend | None = None,
                  **trainer_kwargs: Any) -> dict | None:
    """Run the pass (with ``backend`` instead of the configured one, if given); the merged manifest on rank 0."""
    cfg = to_config(cfg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    jobs = plan_shards(cfg)
    check_outputs([job.sidecar for job in jobs], "output_dir" if cfg.output_dir else "sidecar_dir",
                  manifest_path(cfg, jobs))
    if backend is None:
        backend = build_backend(cfg.backend)
    backend.setup(BackendContext(cfg.prompts, [job.url for job in jobs], jobs[0].sidecar.parent))
    settings = text_settings(cfg, backend)
    if cfg.on_mismatch == "error":
        for job in jobs:
            finished_sidecar(job, settings, cfg.on_mismatch)
    manifest = manifest_path(cfg, jobs)
    header = {
        "format_version": 1,
        "backend": backend.name,
        "settings": settings,
        "manifest": str(manifest),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "started": started,
    }
    callbacks: list = [TextSidecarWriter(jobs, settings, manifest, header)]
    if cfg.progress:
        callbacks.append(TextProgressBar())
    trainer = L.Trainer(
        **{
            "accelerator": cfg.accelerator,
            "devices": cfg.devices,
            "num_nodes": cfg.num_nodes,
            "strategy": cfg.strategy,
            "precision": "32-true",  # the backend picks its own dtype (bf16 weights on GPU)
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
    validator = Validator(cfg.validation, [cfg.prompts.system, cfg.prompts.evidence, cfg.prompts.no_evidence])
    trainer.predict(TextPredictor(backend, validator), datamodule=TextShardData(jobs, settings, cfg),
                    return_predictions=False)
    if trainer.is_global_zero and manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8"))
    return None

