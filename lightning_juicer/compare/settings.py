"""What ``python -m lightning_juicer compare`` reads (``configs/compare/*.yaml``; every field is a flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_juicer.compare.arms import ARMS, DEFAULT_ARMS
from lightning_juicer.errors import ConfigError


@dataclass
class CompareSettings:
    """The paper's comparison on your data: every arm is ``python -m lightning_juicer fit --config <config>`` with
    overrides, trained and evaluated for each seed; a markdown table (mean ± std over seeds) and a plot (metric vs
    image tokens) at the end.

    fit_config: the fit config every arm starts from: model, optimiser, batch and the evaluation callbacks
        (zero-shot, retrieval) whose final figures fill the table.
    train_shards: the training shards (brace pattern / list); null: the config's ``data.init_args.train_shards``,
        else its generated synthetic set.
    arms: which rows to run (names in ``lightning_juicer.compare.arms.ARMS``).
    seeds: one fit per arm and seed (``seed_everything`` and ``data.init_args.seed``).
    steps: Full's optimizer steps (null: the config's ``trainer.max_steps``); batch_size likewise.
    fraction: kept samples of the sieves and kept patches of the token-level arms.
    budget: ``tokens`` (every compressed arm gets ``fraction`` of Full's image tokens, the paper's design) or
        ``steps`` (every arm trains ``steps``).
    governor: ``governor.name`` of the vision pass and of on-the-fly selection (null: the config's).
    governor_head: a class-evidence head file (``preprocess/fit_head.py``) for the vision pass (null: the
        governor's own head, or none).
    text_backend, text_args: the text pass's backend and further flags (e.g. a transformers model).
    vision_args: further flags of the vision pass.
    sidecars: the vision + text sidecars of the training shards (null: ``<out>/sidecars``); run_passes: false
        reuses them as they are.
    reference: the sieves' reference model (an open_clip name, ``local-dir:`` folder or a lightning_juicer .ckpt);
        null: the Full arm of the first seed (a CLIP trained on all the data, as DataComp uses a pretrained CLIP).
    combo_sieve: the sieve of DataJuicer × Sieve; sieve_args: flags per sieve (``{semdedup: [--sieve.init_args.
        clusters, "24"]}``).
    full_patch_fraction: the full-patch phase's share of the steps (paper: 0.02-0.08).
    eval_at_training_r: also evaluate the token-level arms at their training keep ratio and selection.
    fit_args: flags for every arm's fit (e.g. ``[--model.init_args.vision_init, null]``); juicer_args: for the
        DataJuicer arms only.
    threads: OMP / MKL threads of every command (null: the library default).
    out: work folder (runs, logs, keep lists, sidecars, table, plot); finished runs are reused, so an
        interrupted comparison continues where it stopped.
    metrics: the metric keys of the table and plot columns (each evaluation callback's ``results.json`` keys, e.g.
        ``top1``, ``top5``, ``i2t_r1``, ``t2i_r5``, ``mean_recall``); every metric stays in ``results.json``.
    table, plot: output files (null: ``<out>/table.md``, ``<out>/plot.png``).
    dry_run: print the commands, run nothing.
    report_only: run nothing; the table and plot of the runs already in ``out`` (arms and seeds without a run
        are left out, and the table's ``seeds`` column says how many each row averages).
    """

    fit_config: str = "configs/quickstart.yaml"
    train_shards: str | None = None
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int | None = None
    batch_size: int | None = None
    fraction: float = 0.5
    budget: str = "tokens"
    governor: str | None = None
    governor_head: str | None = None
    text_backend: str = "rules"
    text_args: list[str] = field(default_factory=list)
    vision_args: list[str] = field(default_factory=list)
    sidecars: str | None = None
    run_passes: bool = True
    reference: str | None = None
    combo_sieve: str = "d4"
    sieve_args: dict[str, list[str]] = field(default_factory=dict)
    full_patch_fraction: float = 0.08
    eval_at_training_r: bool = True
    fit_args: list[str] = field(default_factory=list)
    juicer_args: list[str] = field(default_factory=list)
    threads: int | None = None
    out: str = "runs/compare"
    metrics: list[str] = field(default_factory=lambda: ["top1", "i2t_r1", "t2i_r1"])
    table: str | None = None
    plot: str | None = None
    dry_run: bool = False
    report_only: bool = False

    def check(self) -> None:
        """One-line errors naming the key for settings that cannot run."""
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"arms: {unknown[0]!r} is not an arm; choose from {', '.join(ARMS)}")
        if not self.arms:
            raise ConfigError("arms: empty; name at least one arm")
        if not self.seeds:
            raise ConfigError("seeds: empty; give at least one seed")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"fraction: {self.fraction} is outside (0, 1)")
        if self.budget not in ("tokens", "steps"):
            raise ConfigError(f"budget: {self.budget!r} is not one of tokens, steps")
        if not 0.0 < self.full_patch_fraction < 1.0:
            raise ConfigError(f"full_patch_fraction: {self.full_patch_fraction} is outside (0, 1)")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("threads", self.threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{name}: {value} must be >= 1")
