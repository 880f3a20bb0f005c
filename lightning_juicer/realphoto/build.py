"""Building the real-photo benchmark: its config, the driver that writes every split, and the paths of a built one.

Layout under ``root`` (``dataset.json`` is written last and marks a complete build):

```
dataset.json                    config, counts, photographs, classes, templates, noise kinds
train/{00000..N}.tar            <key>.jpg + <key>.txt (noisy caption) + <key>.json (ground truth); sizes.json, *_stats.json
val/{00000..M}.tar              the same from Fashion-MNIST test items (validation loss)
eval/zeroshot/<class>/*.png     unmodified Fashion-MNIST test items (resized only); classnames.txt, templates.txt
eval/retrieval/images/*.jpg     test-item composites; karpathy_test.json (5 clean captions each), objects.json (masks)
head/train/<class|none>/*.jpg   one-item composites per class (folder = class name, e.g. 'ankle boot') and
                                item-free photo crops (none), for fitting an evidence head
head/val/<class|none>/*.jpg     the same, other items and crops (held out)
```
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.dataset_dir import DatasetPaths, build_atomically, is_complete, read_marker, refuse_foreign
from lightning_juicer.io.writers import write_json
from lightning_juicer.realphoto.captions import NOISE_KINDS, ZEROSHOT_TEMPLATES, NoiseRates
from lightning_juicer.realphoto.sources import DEFAULT_FASHION_MNIST, FASHION_CLASSES, PHOTO_NAMES, available_photos
from lightning_juicer.realphoto.writers import (
    NONE_CLASS,
    Composer,
    plan_items,
    write_head_folder,
    write_retrieval,
    write_web_split,
    write_zeroshot,
)

FORMAT_VERSION = 1
MARKER = "dataset.json"


@dataclass
class RealPhotoConfig:
    """Sizes, rates and sources of the benchmark (every field is a ``preprocess/make_real_photos.py`` key)."""

    root: str = "data/real_photos"
    seed: int = 0
    image_size: int = 224
    num_train: int = 4000
    samples_per_shard: int = 1000
    num_val: int = 200
    zeroshot_per_class: int = 20
    num_retrieval: int = 100
    head_train_per_class: int = 60
    head_val_per_class: int = 20
    two_item_rate: float = 0.35
    item_scale_min: float = 0.3
    item_scale_max: float = 0.55
    context_rate: float = 0.4
    noise: NoiseRates = field(default_factory=NoiseRates)
    jpeg_quality: int = 90
    photos: list[str] | None = None
    fashion_mnist_dir: str = DEFAULT_FASHION_MNIST


@dataclass(frozen=True)
class RealPhotoPaths(DatasetPaths):
    """Where a built benchmark's parts are: those of every generated dataset, the zero-shot templates, the
    retrieval set's object masks and the head folders."""

    templates_file: Path
    retrieval_objects: Path
    head_train: Path
    head_val: Path


def is_built(root: str | Path) -> bool:
    """True iff root holds a complete benchmark (the marker exists)."""
    return is_complete(root, MARKER)


def real_photo_paths(root: str | Path) -> RealPhotoPaths:
    """Paths of a built benchmark (shard counts from its marker)."""
    root = Path(root).resolve()
    if not is_built(root):
        raise ConfigError(f"real-photo benchmark not found at {root} (no {MARKER}); "
                          "build it with python preprocess/make_real_photos.py --root <folder>")
    common = DatasetPaths.fields_of(root, read_marker(root, MARKER)["counts"])
    return RealPhotoPaths(**common, templates_file=common["zeroshot_dir"] / "templates.txt",
                          retrieval_objects=common["retrieval_json"].parent / "objects.json",
                          head_train=root / "head" / "train", head_val=root / "head" / "val")


def _check(cfg: RealPhotoConfig) -> tuple[str, ...]:
    """Validate sizes and rates; returns the photographs to use."""
    for key in ("num_train", "num_val", "num_retrieval", "zeroshot_per_class", "head_train_per_class",
                "head_val_per_class", "samples_per_shard", "image_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: {getattr(cfg, key)} must be >= 1")
    for key in ("two_item_rate", "context_rate", *(f"noise.{k}" for k in NOISE_KINDS)):
        obj, name = (cfg.noise, key[6:]) if key.startswith("noise.") else (cfg, key)
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ConfigError(f"{key}: {getattr(obj, name)} is outside [0, 1]")
    if not 0.05 <= cfg.item_scale_min <= cfg.item_scale_max <= 1.0:
        raise ConfigError("item_scale_min, item_scale_max: need 0.05 <= min <= max <= 1")
    if cfg.photos is None:
        photos = available_photos()
        if not photos:
            raise ConfigError("photos: none of scikit-image's bundled photographs loads (pip install scikit-image)")
        return photos
    unknown = [p for p in cfg.photos if p not in PHOTO_NAMES]
    if unknown or not cfg.photos:
        raise ConfigError(f"photos: {unknown or 'empty list'}: choose from {PHOTO_NAMES}")
    return tuple(cfg.photos)


def _generate(cfg: RealPhotoConfig, photos: tuple[str, ...], out: Path) -> None:
    """Write every split into out, the marker last."""
    composer = Composer(cfg.seed, photos, cfg.fashion_mnist_dir, cfg.image_size, cfg.jpeg_quality, cfg.two_item_rate,
                        (cfg.item_scale_min, cfg.item_scale_max), cfg.context_rate, cfg.noise)
    head_per_class = cfg.head_train_per_class + cfg.head_val_per_class
    plan = plan_items(cfg.seed, cfg.fashion_mnist_dir, cfg.num_train, head_per_class, cfg.zeroshot_per_class,
                      cfg.num_retrieval + cfg.num_val)
    counts = {
        "train": cfg.num_train,
        "train_shards": write_web_split(composer, "train", plan.train_pairs, "train", out / "train",
                                        cfg.samples_per_shard),
        "val": cfg.num_val,
        "val_shards": write_web_split(composer, "val", plan.test_pairs[cfg.num_retrieval:], "test", out / "val",
                                      cfg.samples_per_shard),
        "zeroshot": write_zeroshot(composer, plan.zeroshot, out / "eval" / "zeroshot"),
        "retrieval": write_retrieval(composer, plan.test_pairs[: cfg.num_retrieval], out / "eval" / "retrieval"),
        "head_train": write_head_folder(composer, "head_train", plan.head, 0, cfg.head_train_per_class,
                                        out / "head" / "train"),
        "head_val": write_head_folder(composer, "head_val", plan.head, cfg.head_train_per_class,
                                      cfg.head_val_per_class, out / "head" / "val"),
    }
    config = asdict(cfg)
    config.pop("root")
    marker = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "counts": counts,
        "photos": list(photos),
        "classes": [{"label": c.label, "name": c.name, "folder": c.slug, "synonyms": list(c.synonyms)}
                    for c in FASHION_CLASSES],
        "head_classes": sorted([c.name for c in FASHION_CLASSES] + [NONE_CLASS]),
        "zeroshot_templates": list(ZEROSHOT_TEMPLATES),
        "noise_kinds": list(NOISE_KINDS),
    }
    write_json(out / MARKER, marker)


def build_real_photos(cfg: RealPhotoConfig) -> RealPhotoPaths:
    """Build the benchmark at cfg.root unless it is already built there (never rebuilds a complete one)."""
    root = Path(cfg.root).resolve()
    if not is_built(root):
        refuse_foreign(root, MARKER, "delete it or choose another root", key="root")
        photos = _check(cfg)
        build_atomically(root, MARKER, lambda out: _generate(cfg, photos, out))
    return real_photo_paths(root)
