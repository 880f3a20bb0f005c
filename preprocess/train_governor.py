"""Train the offline default governor on synthetic scenes and export it as a timm folder.

Usage: python preprocess/train_governor.py --out lightning_juicer/assets/governor-synthetic --steps 700 --seed 0

Every field of ``GovernorTrainConfig`` (lightning_juicer/governor/training.py) is a flag (``--config``,
``--print_config`` as in every jsonargparse command).
At the end the governor is reloaded from the written folder with ``load_governor`` and its quality
figures on held-out scenes are printed (and recorded in the folder's config.json).
"""
from __future__ import annotations

import json
import time

from jsonargparse import CLI

from lightning_juicer.usage import OneLineArgumentParser
from lightning_juicer.errors import exit_on_user_error
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.quality import governor_quality
from lightning_juicer.governor.training import (
    ACTIVATION,
    GovernorTrainConfig,
    save_governor,
    train_governor,
)


def main(argv: list[str] | None = None) -> dict:
    """Train, save, reload and evaluate; returns the quality figures."""
    cfg = CLI(GovernorTrainConfig, args=argv, as_positional=False, description=__doc__,
              parser_class=OneLineArgumentParser, parser_mode="omegaconf")
    start = time.perf_counter()
    model, record = train_governor(cfg)
    out = save_governor(model, cfg.out, record)

    scorer = load_governor(out)
    head = ClassHead.from_model(scorer, activation=ACTIVATION)
    quality = governor_quality(scorer, head, num_images=cfg.eval_images, seed=cfg.eval_seed)
    record["quality"] = quality
    record["total_s"] = round(time.perf_counter() - start, 1)
    save_governor(model, out, record)  # same weights, config.json now with the figures

    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"governor written to {out} ({size / 1e6:.2f} MB)")
    print(f"render {record['render_s']}s, train {record['train_s']}s, total {record['total_s']}s")
    print(json.dumps(quality, indent=2))
    return quality


if __name__ == "__main__":
    exit_on_user_error(main)
