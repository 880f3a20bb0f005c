"""``python -m lightning_juicer compare``: the paper's comparison on your shards, one fit per arm and seed.

    python -m lightning_juicer compare --config configs/compare/synthetic.yaml
    python -m lightning_juicer compare --config configs/compare/real_photos.yaml --seeds [0] --arms [full,datajuicer]
    python -m lightning_juicer compare --fit_config configs/my_run.yaml --train_shards 'data/train/{0000..0099}.tar' \\
        --governor vit_small_patch16_224.dino --text_backend rules --steps 2000 --out runs/compare_mine
    python -m lightning_juicer compare --config configs/compare/synthetic.yaml --print_config   # every setting

Writes ``<out>/table.md`` (markdown, mean ± std over seeds, with the command), ``<out>/results.json`` (every
run's final metrics, image tokens, steps and minutes) and ``<out>/plot.png`` (metric vs image tokens per arm).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from jsonargparse import ActionConfigFile

from lightning_juicer.compare.report import plot, table
from lightning_juicer.compare.run import run_comparison
from lightning_juicer.compare.settings import CompareSettings
from lightning_juicer.usage import OneLineArgumentParser


def parse(argv: list[str]) -> CompareSettings:
    """Settings from ``--config`` files and flags (later wins)."""
    parser = OneLineArgumentParser(prog="python -m lightning_juicer compare", description=__doc__,
                                   parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable; later wins)")
    parser.add_class_arguments(CompareSettings, nested_key=None, fail_untyped=True)
    namespace = parser.instantiate(parser.parse_args(argv))
    return CompareSettings(**{f.name: namespace[f.name] for f in fields(CompareSettings)})


def main(argv: list[str]) -> dict:
    """Run the comparison, write and print the table; returns what results.json holds."""
    settings = parse(argv)
    started = time.perf_counter()
    c = run_comparison(settings)
    if settings.dry_run:
        return {"dry_run": True}
    order = [a for a in dict.fromkeys(["full", *settings.arms])]
    minutes = (time.perf_counter() - started) / 60
    command = "python -m lightning_juicer compare " + " ".join(shlex.quote(a) for a in argv)
    achieved = {s: json.loads(p.read_text())["achieved_fraction"] for s, p in c.keep.items() if p.is_file()}
    text = (f"{table(c.runs, order, settings.fraction, settings.metrics)}\n\nCommand: `{command}` ({len(settings.seeds)} seed(s); Full "
            f"= {c.steps} steps × batch {c.batch_size}; budget {settings.budget}, fraction {settings.fraction:g}; "
            f"{minutes:.1f} min in all, reused runs not timed). Sieve keep fractions achieved: {achieved or 'none'}.\n")
    out_table = Path(settings.table) if settings.table else c.out / "table.md"
    out_table.parent.mkdir(parents=True, exist_ok=True)
    out_table.write_text(text, encoding="utf-8")
    picture = plot(c.runs, order, settings.fraction, Path(settings.plot) if settings.plot else c.out / "plot.png",
                   settings.metrics)
    results = {"settings": asdict(settings), "command": command, "minutes": minutes, "steps": c.commands,
               "runs": [asdict(r) for r in c.runs]}
    (c.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"table: {out_table}" + (f"\nplot: {picture}" if picture else ""), file=sys.stdout)
    return results
