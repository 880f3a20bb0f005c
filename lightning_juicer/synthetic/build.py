"""Writing the synthetic dataset: its config, every split (shards, zero-shot folder, retrieval set) and its paths.

Layout under ``root`` (``dataset.json`` is written last and marks a complete dataset):

```
dataset.json                  config, counts, shape classes, colours, background kinds, noise types
train/{00000..N}.tar          <key>.jpg + <key>.txt (noisy caption) + <key>.json (objects, masks); sizes.json, *_stats.json
val/{00000..M}.tar            the same (validation loss)
eval/zeroshot/<shape>/*.jpg   one object per image; classnames.txt
eval/retrieval/images/*.jpg   karpathy_test.json with five clean captions per image
```

Every sample is drawn from its own generator ``default_rng([seed, split id, index])``, so a split's
bytes depend only on the config; the shard, JSON and image writers are ``lightning_juicer.io``'s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.classnames import write_classnames
from lightning_juicer.io.dataset_dir import DatasetPaths, build_atomically, is_complete, read_marker, refuse_foreign
from lightning_juicer.io.writers import encode_mask, jpeg_bytes, karpathy_image, write_json
from lightning_juicer.io.writers import write_shards as write_shards_of
from lightning_juicer.synthetic.captions import (
    NOISE_TYPES,
    add_caption_noise,
    clean_caption,
    distinct_captions,
    karpathy_tokens,
)
from lightning_juicer.synthetic.scenes import BACKGROUND_KINDS, COLORS, object_fraction, render_scene
from lightning_juicer.synthetic.shapes import SHAPE_CLASSES

FORMAT_VERSION = 1
MARKER = "dataset.json"
SPLIT_IDS = {"train": 0, "val": 1, "zeroshot": 2, "retrieval": 3}


@dataclass
class SyntheticConfig:
    """Sizes, rates and seed of the dataset (``data.init_args.synthetic`` in a training config)."""

    root: str = "data/synthetic"
    seed: int = 0
    image_size: int = 64
    num_train: int = 2000
    samples_per_shard: int = 500
    num_val: int = 256
    eval_per_class: int = 20
    num_retrieval: int = 100
    noise_rate: float = 0.3
    max_objects: int = 3
    jpeg_quality: int = 90


@dataclass(frozen=True)
class SyntheticPaths(DatasetPaths):
    """Where a generated dataset's parts are (the parts every generated dataset has)."""


def _sample_rng(seed: int, split: str, *index: int) -> np.random.Generator:
    """Per-sample generator derived from (seed, split, index)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], *index])


def make_web_sample(cfg: SyntheticConfig, split: str, index: int, key: str) -> dict[str, bytes]:
    """One webdataset sample ({ext: bytes}) with a noisy caption and metadata."""
    rng = _sample_rng(cfg.seed, split, index)
    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    image, objects = render_scene(rng, cfg.image_size, num_objects)
    clean = clean_caption(objects, rng, image.info.get("background"))
    noisy, noise = add_caption_noise(clean, objects, rng, cfg.noise_rate)
    meta = {
        "key": key,
        "caption": noisy,
        "clean_caption": clean,
        "noise": noise,
        "width": image.width,
        "height": image.height,
        "background": image.info.get("background"),
        "objects": [{**{k: o[k] for k in ("shape", "color", "box")}, "mask": encode_mask(o["mask"])} for o in objects],
        "object_fraction": object_fraction(objects),
    }
    return {
        "jpg": jpeg_bytes(image, cfg.jpeg_quality),
        "txt": noisy.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
    }


def write_shards(cfg: SyntheticConfig, split: str, count: int, out_dir: Path) -> int:
    """Write img2dataset-style shards, sizes.json and *_stats.json; returns the shard count."""
    return write_shards_of(out_dir, count, cfg.samples_per_shard,
                           lambda index, key: make_web_sample(cfg, split, index, key))


def write_zeroshot(cfg: SyntheticConfig, out_dir: Path) -> int:
    """ImageFolder of single-object images, one folder per class, plus classnames.txt."""
    classes = sorted(SHAPE_CLASSES)
    out_dir.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        cls_dir = out_dir / name
        cls_dir.mkdir(exist_ok=True)
        for i in range(cfg.eval_per_class):
            rng = _sample_rng(cfg.seed, "zeroshot", c, i)
            image, _ = render_scene(rng, cfg.image_size, 1, shapes=[name])
            (cls_dir / f"{name}_{i:04d}.jpg").write_bytes(jpeg_bytes(image, cfg.jpeg_quality))
    write_classnames(out_dir / "classnames.txt", classes)
    return len(classes) * cfg.eval_per_class


def write_retrieval(cfg: SyntheticConfig, out_dir: Path) -> int:
    """Retrieval images plus karpathy_test.json with 5 clean captions per image."""
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(cfg.num_retrieval):
        rng = _sample_rng(cfg.seed, "retrieval", i)
        image, objects = render_scene(rng, cfg.image_size, int(rng.integers(1, cfg.max_objects + 1)))
        filename = f"{i:05d}.jpg"
        (img_dir / filename).write_bytes(jpeg_bytes(image, cfg.jpeg_quality))
        caps = distinct_captions(objects, rng, image.info.get("background"))
        images.append(karpathy_image(i, filename, caps, karpathy_tokens))
    write_json(out_dir / "karpathy_test.json", {"dataset": "synthetic", "images": images})
    return cfg.num_retrieval


def is_generated(root: str | Path) -> bool:
    """True iff root holds a completed dataset (the dataset.json marker exists)."""
    return is_complete(root, MARKER)


def synthetic_paths(root: str | Path) -> SyntheticPaths:
    """Paths of a generated dataset (shard counts are read from the marker)."""
    root = Path(root).resolve()
    if not is_generated(root):
        raise FileNotFoundError(f"no synthetic dataset at {root} (missing {MARKER}); run prepare_synthetic first")
    return SyntheticPaths(**DatasetPaths.fields_of(root, read_marker(root, MARKER)["counts"]))


def _generate(cfg: SyntheticConfig, out: Path) -> None:
    """Generate every split into out, writing the marker last."""
    counts = {
        "train": cfg.num_train,
        "val": cfg.num_val,
        "train_shards": write_shards(cfg, "train", cfg.num_train, out / "train"),
        "val_shards": write_shards(cfg, "val", cfg.num_val, out / "val"),
        "zeroshot": write_zeroshot(cfg, out / "eval" / "zeroshot"),
        "retrieval": write_retrieval(cfg, out / "eval" / "retrieval"),
    }
    marker = {
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "counts": counts,
        "shape_classes": list(SHAPE_CLASSES),
        "colors": {k: list(v) for k, v in COLORS.items()},
        "background_kinds": list(BACKGROUND_KINDS),
        "noise_types": list(NOISE_TYPES),
    }
    write_json(out / MARKER, marker)


def prepare_synthetic(cfg: SyntheticConfig) -> SyntheticPaths:
    """Generate the dataset at cfg.root if it is missing or empty; never regenerate a completed one."""
    root = Path(cfg.root).resolve()
    if not is_generated(root):
        refuse_foreign(root, MARKER, "delete it or point data.init_args.synthetic.root elsewhere")
        if cfg.num_train < 1 or cfg.num_val < 1 or cfg.max_objects < 1:
            raise ConfigError("data.init_args.synthetic: num_train, num_val and max_objects must be >= 1")
        build_atomically(root, MARKER, lambda out: _generate(cfg, out))
    return synthetic_paths(root)
