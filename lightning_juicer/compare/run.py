"""Run the comparison: the passes and keep lists the arms need, then one ``fit`` per arm and seed.

Everything is the project's own commands as subprocesses (``python -m lightning_juicer vision | text |
embeddings | sieve | fit``), each logging into ``<out>/logs/``; a failing command stops the comparison
with its log's tail. A run whose ``results.json`` exists is reused, so a stopped comparison continues.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_juicer.compare.arms import ARMS, COMBO, Arm, steps_and_tokens
from lightning_juicer.compare.settings import CompareSettings
from lightning_juicer.errors import ConfigError

EVAL_CALLBACKS = ("ZeroShotEvaluation", "RetrievalEvaluation")
DROPPED_CALLBACKS = ("KeptPatchPictures",)  # pictures only: not worth their time in a comparison


def eval_name(name: str, fraction: float) -> str:
    """The dataset name of an evaluation at the training keep ratio (``synthetic`` -> ``synthetic@r0.5``)."""
    return f"{name}@r{fraction:g}"


@dataclass
class RunRecord:
    """One fit's outcome: final metrics by ``dataset/metric``, display names, image tokens, steps, minutes."""

    arm: str
    seed: int
    metrics: dict[str, float]
    names: dict[str, str]
    tokens: float
    steps: int
    minutes: float | None
    log_dir: str


@dataclass
class Comparison:
    """The settings, the base fit config and what the runs produced."""

    settings: CompareSettings
    base: dict
    out: Path
    train_shards: str
    env: dict[str, str]
    steps: int = 0
    batch_size: int = 0
    keep: dict[str, Path] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)

    @property
    def sidecars(self) -> Path:
        return Path(self.settings.sidecars).resolve() if self.settings.sidecars else self.out / "sidecars"

    def governor(self) -> str:
        name = self.settings.governor or ((self.base["data"]["init_args"].get("governor") or {}).get("name"))
        if not name:
            raise ConfigError("governor: required (the config's data.init_args.governor.name is not set either)")
        return name

    def run(self, name: str, args: list[str]) -> None:
        """``python <args>`` from the current folder, output into ``<out>/logs/<name>.log``; exit on failure."""
        log = self.out / "logs" / f"{name}.log"
        command = [sys.executable, *args]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[1:])}", flush=True)
        if self.settings.dry_run:
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as handle:
            code = subprocess.call(command, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        self.commands.append({"step": name, "command": " ".join(command[1:]), "seconds": round(seconds, 1)})
        if code:
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-20:])
            sys.exit(f"{name} failed (exit {code}) after {seconds:.0f} s:\n{tail}\nfull log: {log}")


def load_comparison(settings: CompareSettings) -> Comparison:
    """The base config, the training shards (the synthetic set is generated here if it is the source), the env."""
    settings.check()
    path = Path(settings.fit_config)
    if not path.is_file():
        raise ConfigError(f"fit_config: {settings.fit_config} is not a file")
    base = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(base, dict) or "data" not in base or "trainer" not in base:
        raise ConfigError(f"fit_config: {settings.fit_config} is not a fit config (needs trainer: and data:)")
    data = base["data"].setdefault("init_args", {})
    shards = settings.train_shards or data.get("train_shards")
    if shards is None:
        from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic

        if not settings.dry_run:
            shards = prepare_synthetic(SyntheticConfig(**(data.get("synthetic") or {}))).train_shards
        else:
            shards = "<synthetic train shards>"
    else:
        data["train_shards"] = shards
    env = {**os.environ}
    if settings.threads:
        env.update(OMP_NUM_THREADS=str(settings.threads), MKL_NUM_THREADS=str(settings.threads))
    comparison = Comparison(settings, base, Path(settings.out).resolve(), str(shards), env)
    comparison.steps = settings.steps or int(base["trainer"].get("max_steps") or 0)
    if comparison.steps < 1:
        raise ConfigError(f"steps: required (the config {settings.fit_config} sets no trainer.max_steps)")
    comparison.batch_size = settings.batch_size or int(data.get("batch_size", 64))
    return comparison


def sieve_of(arm: Arm, settings: CompareSettings) -> str | None:
    return settings.combo_sieve if arm.sieve == COMBO else arm.sieve


def make_sidecars(c: Comparison) -> None:
    """The method's two offline passes over the training shards: vision (scores, evidence), then text (captions)."""
    s = c.settings
    common = ["--shards", c.train_shards, "--sidecar_dir", str(c.sidecars), "--progress", "false",
              "--num_workers", "1"]
    head = ["--governor.head.kind", "file", "--governor.head.path", s.governor_head] if s.governor_head else []
    c.run("vision_pass", ["-m", "lightning_juicer", "vision", "--config", "configs/preprocess/vision.yaml", *common,
                          "--governor.name", c.governor(), *head, *s.vision_args])
    c.run("text_pass", ["-m", "lightning_juicer", "text", "--config", "configs/preprocess/text.yaml", *common,
                        "--backend", s.text_backend, *s.text_args])


def make_keep_lists(c: Comparison, sieves: set[str], reference: str | None) -> None:
    """One keep list per sieve at ``fraction``; all but Random read the reference model's embeddings."""
    s = c.settings
    embedded: list[str] = []
    for sieve in sorted(sieves):
        out = c.out / "keep" / f"{sieve}.json"
        c.keep[sieve] = out
        if out.is_file():
            continue
        source = ["--shards", c.train_shards]
        if sieve != "random":
            if not embedded:
                emb_dir = c.out / "embeddings"
                c.run("embeddings", ["-m", "lightning_juicer", "embeddings", "--config",
                                     "configs/preprocess/embeddings.yaml", "--shards", c.train_shards, "--out_dir",
                                     str(emb_dir), "--reference.name", str(reference), "--num_workers", "1",
                                     "--progress", "false", "--on_mismatch", "overwrite"])
                embedded = [str(p) for p in sorted(emb_dir.glob("*.emb.parquet"))] or [str(emb_dir / "*.emb.parquet")]
            source = ["--embeddings", json.dumps(embedded)]
        c.run(f"sieve-{sieve}", ["-m", "lightning_juicer", "sieve", "--config", "configs/preprocess/sieve.yaml",
                                 "--sieve", sieve, "--fraction", str(s.fraction), *source, "--out", str(out),
                                 *s.sieve_args.get(sieve, [])])


def arm_config(c: Comparison, name: str, seed: int) -> tuple[dict, int, float]:
    """The fit config of one arm and seed, its steps and its image tokens as a fraction of Full's."""
    s, arm = c.settings, ARMS[name]
    cfg = copy.deepcopy(c.base)
    steps, tokens = steps_and_tokens(arm, c.steps, s.fraction, s.budget, s.full_patch_fraction)
    data = cfg["data"]["init_args"]
    data.update(seed=seed, batch_size=c.batch_size, selection="full", keep_ratio=1.0, scores="on_the_fly",
                captions=arm.captions)
    data.pop("keep_list", None)
    governor = {**(data.get("governor") or {}), "name": c.governor()} if (arm.scores or arm.juiced) else None
    if governor:
        data["governor"] = governor
    sieve = sieve_of(arm, s)
    if sieve:
        data["keep_list"] = str(c.keep.get(sieve) or c.out / "keep" / f"{sieve}.json")
    if arm.selection:
        data.update(selection=arm.selection, keep_ratio=s.fraction, scores=arm.scores or "on_the_fly")
    if arm.juiced:
        data["sidecar_dir"] = str(c.sidecars)
    if arm.full_patch:
        cfg["model"].setdefault("init_args", {})["full_patch_fraction"] = s.full_patch_fraction
    cfg["seed_everything"] = seed
    trainer = cfg["trainer"]
    trainer.pop("val_check_interval", None)
    trainer.update(max_steps=steps, limit_val_batches=0, check_val_every_n_epoch=None,
                   default_root_dir=str(c.out / "runs"))
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(c.out / "runs"), "name": name, "version": f"seed{seed}"}}
    callbacks = []
    for callback in trainer.get("callbacks") or []:
        class_name = callback["class_path"].rsplit(".", 1)[-1]
        if class_name in DROPPED_CALLBACKS:
            continue
        init = dict(callback.get("init_args") or {})
        if class_name in EVAL_CALLBACKS:
            init.update(every_n_steps=0, at_fit_end=True)  # the final weights only
        if class_name == "ModelCheckpoint":
            init.update(every_n_train_steps=steps, save_last=True)
        callbacks.append({**callback, "init_args": init})
        if class_name in EVAL_CALLBACKS and arm.selection and s.eval_at_training_r:
            name_ = init.get("name") or ("zeroshot" if class_name == "ZeroShotEvaluation" else "retrieval")
            at_r = {**init, "name": eval_name(name_, s.fraction), "keep_ratio": s.fraction,
                    "selection": arm.selection, "title": f"{init.get('title') or name_} at r={s.fraction:g}"}
            if arm.scores:
                at_r["governor"] = governor
            callbacks.append({**callback, "init_args": at_r})
    trainer["callbacks"] = callbacks
    return cfg, steps, tokens


def final_metrics(log_dir: Path) -> tuple[dict[str, float], dict[str, str]] | None:
    """The last value of every ``dataset/metric`` in a run's results.json and display names (None: no file)."""
    path = log_dir / "results.json"
    if not path.is_file():
        return None
    values: dict[str, float] = {}
    names: dict[str, str] = {}
    for record in json.loads(path.read_text(encoding="utf-8")):
        key = f"{record['dataset']}/{record['metric']}"
        values[key] = record["value"]
        names[key] = record.get("name", record["metric"])
    return values, names


def fit(c: Comparison, name: str, seed: int) -> RunRecord | None:
    """Train and evaluate one arm and seed, unless its results exist (``report_only``: None for a missing run)."""
    cfg, steps, tokens = arm_config(c, name, seed)
    log_dir = c.out / "runs" / name / f"seed{seed}"
    found = final_metrics(log_dir)
    minutes = None
    info = log_dir / "compare.json"
    config = c.out / "configs" / f"{name}-seed{seed}.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    if found is not None and (not config.is_file() or config.read_text(encoding="utf-8") != text):
        raise ConfigError(f"out: {log_dir} holds a run of {name} seed {seed} made with another config than "
                          f"{config} would be now; choose another out folder or delete that run")
    if found is None and c.settings.report_only:
        return None
    if found is None:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(text, encoding="utf-8")
        extra = [*c.settings.fit_args, *(c.settings.juicer_args if name.startswith("datajuicer") else [])]
        start = time.perf_counter()
        c.run(f"{name}-seed{seed}", ["-m", "lightning_juicer", "fit", "--config", str(config), *extra])
        minutes = (time.perf_counter() - start) / 60
        if c.settings.dry_run:
            return RunRecord(name, seed, {}, {}, tokens, steps, None, str(log_dir))
        found = final_metrics(log_dir)
        if found is None:
            sys.exit(f"{name} seed {seed}: no results.json in {log_dir}; does {c.settings.fit_config} list evaluation "
                     "callbacks (ZeroShotEvaluation, RetrievalEvaluation)?")
        info.write_text(json.dumps({"minutes": minutes, "steps": steps, "tokens": tokens}) + "\n", encoding="utf-8")
    elif info.is_file():
        minutes = json.loads(info.read_text(encoding="utf-8")).get("minutes")
    record = RunRecord(name, seed, found[0], found[1], tokens, steps, minutes, str(log_dir))
    c.runs.append(record)
    return record


def run_comparison(settings: CompareSettings) -> Comparison:
    """Passes, keep lists and fits, seed by seed (Full first: it is the sieves' default reference model)."""
    c = load_comparison(settings)
    needs_full = settings.reference is None and any(sieve_of(ARMS[a], settings) not in (None, "random")
                                                    for a in settings.arms)
    first = ["full"] if needs_full or "full" in settings.arms else []  # Full first: the sieves' reference
    arms = list(dict.fromkeys([*first, *settings.arms]))
    if settings.report_only:
        for seed in settings.seeds:
            for name in arms:
                fit(c, name, seed)
        return c
    if any(ARMS[a].juiced for a in arms) and settings.run_passes:
        make_sidecars(c)
    sieves = {sieve_of(ARMS[a], settings) for a in arms} - {None}
    for i, seed in enumerate(settings.seeds):
        for name in arms:
            if name != "full" and i == 0 and sieves and not c.keep:
                reference = settings.reference or str(Path(c.runs[0].log_dir if c.runs else c.out / "runs" / "full" /
                                                           f"seed{seed}") / "checkpoints" / "last.ckpt")
                make_keep_lists(c, sieves, reference)
            fit(c, name, seed)
    return c
