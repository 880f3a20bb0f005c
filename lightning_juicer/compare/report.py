"""The comparison's outputs: a markdown table (mean ± std over seeds) and a plot of each metric vs image tokens."""

from __future__ import annotations

import statistics
import textwrap
from collections import defaultdict
from pathlib import Path

from lightning_juicer.compare.arms import ARMS
from lightning_juicer.compare.run import RunRecord


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value), in percent."""
    mean = 100 * statistics.fmean(values)
    return mean, (100 * statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float]) -> str:
    """``mean ± std`` in percent (``± -`` for one seed)."""
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {'-' if std is None else f'{std:.1f}'}"


def by_arm(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        grouped[run.arm].append(run)
    return grouped


def metric_columns(runs: list[RunRecord], metrics: list[str] | None = None) -> tuple[list[str], list[str], dict[str, str]]:
    """The ``dataset/metric`` keys evaluated at r = 1 and at the training r (datasets named ``...@r<f>``), and names.

    ``metrics``: only these metric keys, in this order within each dataset (None: all)."""
    names: dict[str, str] = {}
    at_one: list[str] = []
    at_r: list[str] = []
    for run in runs:
        names.update(run.names)
        for key in run.metrics:
            if metrics is not None and key.split("/", 1)[1] not in metrics:
                continue
            target = at_r if "@r" in key.split("/", 1)[0] else at_one
            if key not in target:
                target.append(key)
    if metrics is not None:
        rank = {m: i for i, m in enumerate(metrics)}
        for keys in (at_one, at_r):
            datasets = list(dict.fromkeys(k.split("/", 1)[0] for k in keys))
            keys.sort(key=lambda k: (datasets.index(k.split("/", 1)[0]), rank[k.split("/", 1)[1]]))
    return at_one, at_r, names


def column_title(key: str, names: dict[str, str], fraction: float | None = None) -> str:
    """The evaluation's own display name (it names the dataset), marked with the keep ratio for an ``@r`` column."""
    dataset, metric = key.split("/", 1)
    name = names.get(key, f"{dataset.split('@')[0]} {metric}")
    return name if fraction is None or f"r={fraction:g}" in name else f"{name} @ r={fraction:g}"


def table(runs: list[RunRecord], order: list[str], fraction: float, metrics: list[str] | None = None) -> str:
    """One row per arm: level, image tokens, each metric at r = 1, then at the training r; minutes per run."""
    grouped = by_arm(runs)
    at_one, at_r, names = metric_columns(runs, metrics)
    head = ["method", "level", "image tokens", "steps", "seeds", *[column_title(k, names) for k in at_one],
            *[column_title(k, names, fraction) for k in at_r], "minutes / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in order:
        rows = grouped.get(arm)
        if not rows:
            continue
        cells = [ARMS[arm].title, ARMS[arm].level, f"{100 * rows[0].tokens:.0f} %", str(rows[0].steps), str(len(rows))]
        for key in [*at_one, *at_r]:
            values = [r.metrics[key] for r in rows if key in r.metrics]
            cells.append(fmt(values) if values else "—")
        minutes = [r.minutes for r in rows if r.minutes]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "(reused)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[RunRecord], order: list[str], fraction: float, path: Path,
         metrics: list[str] | None = None) -> Path | None:
    """One panel per metric: mean ± std over seeds vs image tokens, one marker per arm (hollow: at the training r).

    Returns None (and says so) when matplotlib is not installed: ``pip install matplotlib``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: skipped, matplotlib is not installed (pip install matplotlib, or the project's [dev] extra)")
        return None
    grouped = by_arm(runs)
    at_one, at_r, names = metric_columns(runs, metrics)
    fig, axes = plt.subplots(1, len(at_one), figsize=(4.2 * len(at_one), 3.8), squeeze=False)
    colours = plt.get_cmap("tab20")
    for ax, key in zip(axes[0], at_one):
        present = [a for a in order if a in grouped]
        budgets = [round(100 * grouped[a][0].tokens) for a in present]
        for i, arm in enumerate(present):
            rows = grouped[arm]
            same = [a for a, b in zip(present, budgets) if b == budgets[i]]  # arms at one budget, side by side
            x = 100 * rows[0].tokens + 0.8 * (same.index(arm) - (len(same) - 1) / 2)
            for metric, hollow in ((key, False), (_at_r_key(key, at_r), True)):
                values = [r.metrics[metric] for r in rows if metric and metric in r.metrics]
                if not values:
                    continue
                mean, std = mean_std(values)
                ax.errorbar(x, mean, yerr=std or 0.0, fmt="o", color=colours(i % 20), capsize=3,
                            mfc="none" if hollow else colours(i % 20), label=None if hollow else ARMS[arm].title)
        ax.set_xlabel("image tokens (% of Full)")
        ax.set_title(textwrap.fill(names.get(key, key.split("/", 1)[0]), 48), fontsize=8)  # long names wrap
        ax.set_ylabel(f"{key.split('/', 1)[1]} (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(f"filled: evaluated on whole images (r = 1); hollow: at the training r = {fraction:g}", fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 5), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _at_r_key(key: str, at_r: list[str]) -> str | None:
    dataset, metric = key.split("/", 1)
    return next((k for k in at_r if k.split("@")[0] == dataset and k.endswith("/" + metric)), None)
