"""Text pass: every caption of every shard rewritten by the text governor with its visual evidence.

    python -m lightning_juicer text --config configs/preprocess/text.yaml \\
        --shards 'data/synthetic/train/{00000..00007}.tar' --backend rules

It reads each shard's captions and its vision sidecar (the class evidence C': stored classes with
p > ε, at most N), asks the backend (``text/backends``) for the juiced caption, validates every
output and writes the result into the sidecar's ``caption`` column: in place, or into a copy in
``output_dir`` (to keep several caption versions next to one vision pass). The run machinery (ranks,
atomic writes, manifest, progress) is :mod:`lightning_juicer.passes.base`.

**Resuming.** A target sidecar whose ``juicer.text`` metadata records the same text settings (backend
and its settings, validation, evidence filter) is finished and skipped (``existing``); one written
with other text settings is refused (``on_mismatch: error``) or recomputed (``overwrite``).

**Counts per shard.** ``rewritten`` (accepted and different from the original), ``unchanged``,
``fallback`` by reason (the output was rejected, or the input was not sent: the original caption is
stored; reasons in ``text/validation.py``), ``evidence_added`` (per class: evidence classes an accepted
caption names that its original did not) and ``skipped`` by reason (``passes/captions.py``). The run's
speed counts the captions sent to the backend.

**Class vocabulary.** ``invented_object`` needs the evidence head's classes: ``validation.classnames``,
else the vision sidecars' ``head.classnames`` setting, else every class the shard's sidecar stores.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse.typing import NonNegativeInt, PositiveInt

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.sidecar import read_sidecar, sidecar_info, sidecar_path, write_sidecar
from lightning_juicer.passes.base import OpenShard, ShardPass, pass_command
from lightning_juicer.passes.captions import CaptionBatches, TextJob
from lightning_juicer.passes.config import PassSettings, to_settings
from lightning_juicer.passes.manifest import ManifestTotals, summary
from lightning_juicer.text.backends import BACKENDS, BackendContext, TextBackend
from lightning_juicer.text.prompts import PromptConfig, Request
from lightning_juicer.text.validation import ValidationConfig, Validator, evidence_woven

log = logging.getLogger(__name__)
PROG = "python -m lightning_juicer text"


@dataclass
class TextSettings(PassSettings):
    """The text pass: juiced captions (repaired, with the vision pass's class evidence) written into the sidecars.

    Args:
        sidecar_dir: where the vision sidecars are (null: next to each shard).
        output_dir: null: captions go into the vision sidecars; a folder: sidecar copies with captions.
        backend: a registered name with its defaults (transformers | rules | concat) or class_path + init_args.
        prompts: P_M (system) and P_O (evidence); the caption is fenced as data.
        validation: limits on accepted outputs (a rejected one keeps the original caption, counted by reason).
        threshold: evidence ε (p > ε); null: the vision sidecars' setting.
        max_classes: evidence N; null: the vision sidecars' setting; 0: no evidence (repair only).
        precision: 32-true: the backend picks its own dtype (transformers: bf16 weights on GPU).
    """

    sidecar_dir: str | None = None
    output_dir: str | None = None
    backend: str | TextBackend = "transformers"
    prompts: PromptConfig = field(default_factory=PromptConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    threshold: float | None = None
    max_classes: NonNegativeInt | None = None
    batch_size: PositiveInt = 64
    num_workers: NonNegativeInt = 2
    precision: str | None = "32-true"

    def check(self) -> None:
        super().check()
        if self.threshold is not None and not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold: {self.threshold} is outside [0, 1)")


class TextPredictor(L.LightningModule):
    """Sends a batch's usable captions to the backend and validates every output."""

    def __init__(self, backend: TextBackend, validator: Validator) -> None:
        super().__init__()
        self.backend = backend
        self.validator = validator
        self.llm = backend.module  # registered so that Lightning moves it to the device

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, list]:
        """Per sample: ``caption`` (juiced; the original on a fallback; None when skipped), ``status``,
        ``evidence_added`` and ``sent`` (whether it went to the backend)."""
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
            outputs, failed = self.backend.rewrite(requests), False
        except Exception as exn:  # one bad batch must not stop the pass: its samples keep their captions
            log.error("text pass: backend %s failed on a batch of shard %s: %r", self.backend.name, batch["shard"], exn)
            outputs, failed = [""] * len(requests), True
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
        sent = set(where)
        return {"caption": captions, "status": status, "evidence_added": woven,
                "sent": [i in sent for i in range(len(captions))]}


class TextPass(ShardPass[TextSettings]):
    """Juiced captions -> the ``caption`` column of the vision sidecars (or of copies in ``output_dir``)."""

    settings_type = TextSettings
    label = "text pass"
    manifest_name = "text_pass.manifest.json"
    output_what = "sidecar"
    written = "captions stored"
    totals = ManifestTotals(numbers=("rewritten", "unchanged"), counters=("fallback", "evidence_added"),
                            rate="captions_per_second")

    def __init__(self, settings: TextSettings, backend: TextBackend | None = None) -> None:
        super().__init__(settings)
        self.backend = backend or BACKENDS.build(settings.backend, "backend")
        self.jobs: list[TextJob] = []

    @property
    def output_key(self) -> str:
        """The settings key naming the folder written into (for error messages)."""
        return "output_dir" if self.settings.output_dir else "sidecar_dir"

    def output_path(self, url: str) -> Path:
        return sidecar_path(url, self.settings.output_dir or self.settings.sidecar_dir)

    def plan(self) -> list[TextJob]:
        """The shards with the sidecars they read (vision) and write (target); at least one vision sidecar."""
        self.jobs = [TextJob(job.index, job.url, job.output, job.size, sidecar_path(job.url, self.settings.sidecar_dir))
                     for job in super().plan()]
        if not any(job.source.is_file() for job in self.jobs):
            raise ConfigError(f"sidecar_dir: no vision sidecars found (looked for {self.jobs[0].source}); run "
                              "the vision pass first or point sidecar_dir at its sidecars")
        return self.jobs

    def load_models(self) -> None:
        """Set the backend up (prompts, the job's shards as its corpus, the output folder) and the validator."""
        prompts = self.settings.prompts
        self.backend.setup(BackendContext(prompts, [job.url for job in self.jobs], self.jobs[0].output.parent))
        self.validator = Validator(self.settings.validation, [prompts.system, prompts.evidence, prompts.no_evidence])
        self.identity = {"backend": self.backend.name, "backend_settings": self.backend.settings,
                         "validation": asdict(self.settings.validation), "threshold": self.settings.threshold,
                         "max_classes": self.settings.max_classes}

    def header(self) -> dict[str, Any]:
        return {"format_version": 1, "backend": self.backend.name, "settings": self.identity}

    def config_record(self) -> dict[str, Any]:
        """The settings, the backend by name (its settings are the header's)."""
        values = {f.name: getattr(self.settings, f.name) for f in fields(self.settings)}
        return {**{k: asdict(v) if is_dataclass(v) else v for k, v in values.items() if k != "backend"},
                "backend": self.backend.name}

    def existing(self, job: TextJob) -> dict[str, Any] | None:
        """The counts of a sidecar whose captions were written with these text settings, else None."""
        text = sidecar_info(job.output).extra.get("text") if job.output.is_file() else None
        if text is None:
            return None
        if json.dumps(text.get("settings"), sort_keys=True) == json.dumps(self.identity, sort_keys=True):
            return text.get("counts", {})
        return self.mismatched(ConfigError(
            f"backend: sidecar {job.output} holds captions written with other text settings "
            f"({text.get('settings', {}).get('backend')}); delete it, set --on_mismatch overwrite, "
            "use another output_dir, or fix the config"))

    def dataset_for(self, jobs: list[TextJob]) -> CaptionBatches:
        return CaptionBatches(jobs, self.settings.batch_size, self.settings.threshold, self.settings.max_classes)

    def predictor(self) -> TextPredictor:
        return TextPredictor(self.backend, self.validator)

    def keep(self, batch: dict, prediction: dict[str, list]) -> list[tuple]:
        """Per sample: (caption, status, evidence added, sent)."""
        return list(zip(prediction["caption"], prediction["status"], prediction["evidence_added"], prediction["sent"]))

    def scored(self, shard: OpenShard) -> int:
        return sum(sent for *_, sent in chain.from_iterable(shard.parts))

    def finish_shard(self, job: TextJob, shard: OpenShard, counts: dict[str, Any]) -> dict[str, Any]:
        """Write the captions into (a copy of) the vision sidecar, atomically; the shard's counts."""
        rows_out = dict(zip(shard.keys, chain.from_iterable(shard.parts)))
        status = Counter(row[1] for row in rows_out.values())
        counts = {
            **counts,
            "written": sum(row[0] is not None for row in rows_out.values()),
            "rewritten": status["rewritten"],
            "unchanged": status["unchanged"],
            "fallback": {s.split(":", 1)[1]: n for s, n in sorted(status.items()) if s.startswith("fallback:")},
            "evidence_added": dict(sorted(Counter(n for row in rows_out.values() for n in row[2]).items())),
        }
        table = read_sidecar(job.source)
        rows = table.rows()
        rows.captions = [rows_out[key][0] if key in rows_out else None for key in rows.keys]
        write_sidecar(job.output, rows, table.governor, table.settings,
                      {**table.extra, "text": {"settings": self.identity, "counts": counts}})
        return counts

    def describe(self, manifest: dict[str, Any]) -> str:
        """The base summary with a line on the captions: rewritten, unchanged, fallbacks by reason."""
        totals = manifest["totals"]
        fallback = ", ".join(f"{k}={v}" for k, v in totals["fallback"].items()) or "none"
        lines = summary(manifest, self.written, self.totals.rate, f"captions sent to {manifest['backend']}")
        first, *rest = lines.split("\n")
        return "\n".join([first, f"captions: {totals['rewritten']} rewritten, {totals['unchanged']} unchanged, "
                                  f"fallback to the original: {fallback}", *rest])


def text_settings(value: TextSettings | Mapping[str, Any]) -> TextSettings:
    """Checked settings from a TextSettings or a mapping shaped like ``configs/preprocess/text.yaml``."""
    return to_settings(TextSettings, value, PROG)


def run_text_pass(settings: TextSettings | Mapping[str, Any], backend: TextBackend | None = None,
                  **trainer_kwargs: Any) -> dict | None:
    """Run the pass (with ``backend`` instead of the configured one, if given); the merged manifest on rank 0."""
    return TextPass(text_settings(settings), backend).run(**trainer_kwargs)


def main(argv: list[str]) -> dict | None:
    """``python -m lightning_juicer text --config configs/preprocess/text.yaml --shards ...``."""
    return pass_command(TextPass, argv, PROG, __doc__)
