"""JPEG decoding at the limit: full vs reduced-size (PIL draft) decode, and the training loader vs that limit.

    python benchmarks/decode_throughput.py                   # 2 shards of 256 web-size JPEGs, 5 rounds
    python benchmarks/decode_throughput.py --image-size 224 --rounds 7 --images 512

The images are scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket, camera, ...)
cut and resized to web sizes (longest side 400-1,000 px, random crop and flip, JPEG quality 80-95),
written as webdataset shards with a caption each. Arms, run interleaved in every round (so a busy
machine slows all of them alike), each over the same images, one thread each:

    full decode + resize   load_rgb (no draft) + the student's pixel transform (resize, crop, to uint8:
                           DataSpec.pixel_transform, what the loader's workers run)
    draft decode + resize  load_rgb with the transform's draft size + the same transform: the bare limit
    loader per worker      JuicerDataModule's training DataLoader with ONE worker (tar reading, decode,
                           transform, caption, tokenizer, random selection, collation, the batch's
                           hand-over to the main process), samples/s

Printed: median and spread (min-max) over the rounds of each arm's images/s and of the ratios
draft/full and loader/limit (target >= 0.9), each ratio taken within a round.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import webdataset as wds
from PIL import Image

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.io.decode import draft_size, load_rgb

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry",
          "retina", "moon", "cell", "clock")


def web_images(count: int, seed: int = 0) -> list[bytes]:
    """``count`` web-size JPEGs cut from the bundled photographs."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        longest = int(rng.integers(400, 1001))
        scale = longest / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
        out.append(buf.getvalue())
    return out


def write_shards(images: list[bytes], root: Path, per_shard: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    urls, sizes = [], {}
    for s, start in enumerate(range(0, len(images), per_shard)):
        path = root / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i, data in enumerate(images[start : start + per_shard]):
                sink.write({"__key__": f"{start + i:09d}", "jpg": data, "txt": f"a photograph number {start + i}"})
        urls.append(str(path))
        sizes[path.name] = len(images[start : start + per_shard])
    (root / "sizes.json").write_text(json.dumps(sizes))
    return urls


def bare(images: list[bytes], transform, draft) -> float:
    start = time.perf_counter()
    for data in images:
        transform(load_rgb(data, draft))
    return len(images) / (time.perf_counter() - start)


def loader_rate(urls: list[str], spec: DataSpec, batch_size: int, images: int) -> float:
    """Samples/s of the training DataLoader with one worker, after its first batch (startup excluded)."""
    dm = JuicerDataModule(train_shards=urls, batch_size=batch_size, num_workers=1, shuffle_buffer=0,
                          selection="random", keep_ratio=0.5, data_spec=spec)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += batch["image"].shape[0]
        if seen >= images - batch_size:
            break
    return seen / (time.perf_counter() - start)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f}  ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = web_images(args.images)
    root = Path(args.root or tempfile.mkdtemp()) / "web"
    urls = write_shards(images, root, args.images // 2)
    sizes = [Image.open(io.BytesIO(d)).size for d in images]
    spec = DataSpec(image_size=args.image_size, patch_size=16, tokenizer=open_clip.get_tokenizer("ViT-B-16"))
    transform = spec.pixel_transform()
    draft = draft_size(transform)
    reduced = sum(min(w // draft[0], h // draft[1]) >= 2 for w, h in sizes)
    print(f"{len(images)} JPEGs, {np.mean([w * h for w, h in sizes]) / 1e3:.0f} kpixels on average, longest side "
          f"{min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px; {reduced} of them decodable at >= 1/2 "
          f"for a {args.image_size} px crop; torch threads 1, loader 1 worker")
    rows: dict[str, list[float]] = {"full": [], "draft": [], "loader": []}
    for r in range(args.rounds):
        arms = [("full", lambda: bare(images, transform, None)), ("draft", lambda: bare(images, transform, draft)),
                ("loader", lambda: loader_rate(urls, spec, args.batch_size, len(images)))]
        for name, arm in (arms if r % 2 == 0 else arms[::-1]):  # alternate the order too
            rows[name].append(arm())
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rows.items()), flush=True)
    print(f"\n{'arm':38s} {'median':>8s}  (min-max over {args.rounds} rounds)")
    print(f"{'full decode + resize, images/s':38s} {summary(rows['full'])}")
    print(f"{'draft decode + resize (limit), images/s':38s} {summary(rows['draft'])}")
    print(f"{'training loader per worker, samples/s':38s} {summary(rows['loader'])}")
    speedup = [d / f for d, f in zip(rows["draft"], rows["full"])]
    ratio = [lo / d for lo, d in zip(rows["loader"], rows["draft"])]
    print(f"{'draft / full':38s} {summary(speedup)}")
    print(f"{'loader / limit':38s} {summary(ratio)}   target >= 0.9: "
          f"{'ok' if statistics.median(ratio) >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
