"""The benchmark's splits on disk: training/validation shards, the zero-shot folder, the retrieval set, the head folder.

Every sample is drawn from its own generator ``default_rng([seed, split id, index])`` and every item
comes from a fixed partition of Fashion-MNIST (``ItemPlan``), so a split's bytes depend only on the
config. The shard, JSON and image writers are ``lightning_juicer.io.writers``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.classnames import write_classnames
from lightning_juicer.io.writers import encode_mask, jpeg_bytes, karpathy_image, png_bytes, write_json, write_shards
from lightning_juicer.realphoto.captions import (
    ZEROSHOT_TEMPLATES,
    NoiseRates,
    distinct_clean_captions,
    noisy_caption,
)
from lightning_juicer.realphoto.composition import Item, object_fraction, paste_items, photo_crop
from lightning_juicer.realphoto.sources import FASHION_CLASSES, load_fashion_mnist

SPLIT_IDS = {"train": 0, "val": 1, "zeroshot": 2, "retrieval": 3, "head_train": 4, "head_val": 5, "items": 6}
NONE_CLASS = "none"


@dataclass(frozen=True)
class Composer:
    """What every composite needs: the photographs, the item source, sizes and rates (from the benchmark config)."""

    seed: int
    photos: tuple[str, ...]
    fashion_mnist_dir: str
    image_size: int
    jpeg_quality: int
    two_item_rate: float
    item_scale: tuple[float, float]
    context_rate: float
    noise: NoiseRates

    def rng(self, split: str, *index: int) -> np.random.Generator:
        """The generator of one sample."""
        return np.random.default_rng([self.seed, SPLIT_IDS[split], *index])

    def pixels(self, item: Item) -> np.ndarray:
        """The 28 x 28 grey pixels of an item."""
        return load_fashion_mnist(self.fashion_mnist_dir, item.split)[0][item.index]

    def compose(self, rng: np.random.Generator, items: list[Item]):
        """A crop of a random photograph with the items pasted on; returns (image, photo name, crop box, placed)."""
        photo = self.photos[int(rng.integers(len(self.photos)))]
        background, crop = photo_crop(rng, photo, self.image_size)
        image, placed = paste_items(rng, background, [(it, self.pixels(it)) for it in items], self.item_scale)
        return image, photo, crop, placed


@dataclass(frozen=True)
class ItemPlan:
    """Disjoint Fashion-MNIST items per use: ``train_pairs`` (two per training sample), ``head`` (per class),
    ``zeroshot`` (per class) and ``test_pairs`` (retrieval, then validation, two per sample)."""

    train_pairs: np.ndarray
    head: dict[int, list[int]]
    zeroshot: dict[int, list[int]]
    test_pairs: np.ndarray


def plan_items(seed: int, fashion_mnist_dir: str, num_train: int, head_per_class: int, zeroshot_per_class: int,
               num_test_samples: int) -> ItemPlan:
    """Partition Fashion-MNIST's train and test items between the splits (seeded; refuses sizes it cannot meet)."""
    rng = np.random.default_rng([seed, SPLIT_IDS["items"]])
    _, train_labels = load_fashion_mnist(fashion_mnist_dir, "train")
    _, test_labels = load_fashion_mnist(fashion_mnist_dir, "test")
    train_perm, test_perm = rng.permutation(len(train_labels)), rng.permutation(len(test_labels))
    if 2 * num_train + 10 * head_per_class > len(train_labels):
        raise ConfigError(f"num_train: {num_train} samples (two items each) and {head_per_class} head images per "
                          f"class need more than Fashion-MNIST's {len(train_labels)} training items")
    head = _per_class(train_perm[2 * num_train:], train_labels, head_per_class, "head_per_class")
    zeroshot = _per_class(test_perm, test_labels, zeroshot_per_class, "zeroshot_per_class")
    used = {i for ids in zeroshot.values() for i in ids}
    rest = np.array([i for i in test_perm if int(i) not in used], dtype=np.int64)
    if 2 * num_test_samples > len(rest):
        raise ConfigError(f"num_retrieval + num_val: {num_test_samples} samples need more than the {len(rest)} "
                          "Fashion-MNIST test items left after the zero-shot set")
    return ItemPlan(train_perm[: 2 * num_train].reshape(-1, 2), head, zeroshot,
                    rest[: 2 * num_test_samples].reshape(-1, 2))


def _per_class(order: np.ndarray, labels: np.ndarray, per_class: int, key: str) -> dict[int, list[int]]:
    """The first per_class indices of each class, in the given order."""
    out: dict[int, list[int]] = {c: [] for c in range(len(FASHION_CLASSES))}
    for i in order:
        c = int(labels[i])
        if len(out[c]) < per_class:
            out[c].append(int(i))
    if any(len(v) < per_class for v in out.values()):
        raise ConfigError(f"{key}: {per_class} items per class is more than Fashion-MNIST has left")
    return out


def _items(composer: Composer, rng: np.random.Generator, pair: np.ndarray, split: str) -> list[Item]:
    """One or two items of a sample (two with probability two_item_rate)."""
    labels = load_fashion_mnist(composer.fashion_mnist_dir, split)[1]
    count = 2 if rng.random() < composer.two_item_rate else 1
    return [Item(split, int(i), int(labels[i])) for i in pair[:count]]


def _object_record(p) -> dict:
    cls = FASHION_CLASSES[p.item.label]
    return {"label": p.item.label, "class": cls.name, "fashion_mnist": f"{p.item.split}/{p.item.index}",
            "box": p.box, "tint": p.tint, "mask": encode_mask(p.mask)}


def web_sample(composer: Composer, split: str, index: int, key: str, pair: np.ndarray, item_split: str
               ) -> dict[str, bytes]:
    """One webdataset sample: the composite (jpg), its noisy caption (txt) and the ground truth (json)."""
    rng = composer.rng(split, index)
    items = _items(composer, rng, pair, item_split)
    image, photo, crop, placed = composer.compose(rng, items)
    cap = noisy_caption([it.label for it in items], photo, rng, composer.context_rate, composer.noise)
    meta = {
        "key": key, "caption": cap.text, "clean_caption": cap.clean, "noise": cap.noise,
        "named": [FASHION_CLASSES[c].name for c in cap.named],
        "wrong": None if cap.wrong is None else FASHION_CLASSES[cap.wrong].name,
        "context": {"photo": photo, "crop": crop, "named": cap.context},
        "width": image.width, "height": image.height,
        "objects": [_object_record(p) for p in placed], "object_fraction": object_fraction(placed),
    }
    return {"jpg": jpeg_bytes(image, composer.jpeg_quality), "txt": cap.text.encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8")}


def write_web_split(composer: Composer, split: str, pairs: np.ndarray, item_split: str, out_dir: Path,
                    per_shard: int) -> int:
    """Shards of noisy-caption composites, one per row of pairs; returns the shard count."""
    return write_shards(out_dir, len(pairs), per_shard,
                        lambda index, key: web_sample(composer, split, index, key, pairs[index], item_split))


def write_zeroshot(composer: Composer, items: dict[int, list[int]], out_dir: Path) -> int:
    """ImageFolder of unmodified Fashion-MNIST test items (only resized), classnames.txt and templates.txt."""
    images = load_fashion_mnist(composer.fashion_mnist_dir, "test")[0]
    order = sorted(range(len(FASHION_CLASSES)), key=lambda c: FASHION_CLASSES[c].slug)
    for c in order:
        folder = out_dir / FASHION_CLASSES[c].slug
        folder.mkdir(parents=True, exist_ok=True)
        for index in items[c]:
            image = Image.fromarray(images[index]).resize((composer.image_size,) * 2, Image.BICUBIC)
            (folder / f"test_{index:05d}.png").write_bytes(png_bytes(image))
    write_classnames(out_dir / "classnames.txt", [FASHION_CLASSES[c].name for c in order])
    (out_dir / "templates.txt").write_text("".join(t + "\n" for t in ZEROSHOT_TEMPLATES), encoding="utf-8")
    return sum(len(v) for v in items.values())


def _tokens(caption: str) -> list[str]:
    """Karpathy-style tokens of a clean caption (lower case, split at spaces and commas)."""
    return caption.lower().replace(",", " ").split()


def write_retrieval(composer: Composer, pairs: np.ndarray, out_dir: Path) -> int:
    """Composites of test items with 5 clean captions each: images/ and karpathy_test.json (split ``test``)."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    labels = load_fashion_mnist(composer.fashion_mnist_dir, "test")[1]
    entries, objects = [], {}
    for i, pair in enumerate(pairs):
        rng = composer.rng("retrieval", i)
        items = _items(composer, rng, pair, "test")
        image, photo, _, placed = composer.compose(rng, items)
        filename = f"{i:05d}.jpg"
        (out_dir / "images" / filename).write_bytes(jpeg_bytes(image, composer.jpeg_quality))
        caps = distinct_clean_captions([int(labels[it.index]) for it in items], photo, rng)
        entries.append(karpathy_image(i, filename, caps, _tokens))
        objects[filename] = {"photo": photo, "objects": [_object_record(p) for p in placed]}
    write_json(out_dir / "karpathy_test.json", {"dataset": "real_photos", "images": entries})
    write_json(out_dir / "objects.json", objects)
    return len(pairs)


def write_head_folder(composer: Composer, split: str, items: dict[int, list[int]], start: int, count: int,
                      out_dir: Path) -> int:
    """ImageFolder for fitting an evidence head: one-item composites per class plus ``none`` (photo crops only).

    Folders are the class names themselves (``ankle boot``, ``t-shirt``, ...: a head fitted on the
    folder names emits evidence a caption can use) and ``none``. Uses items[c][start:start + count]
    of every class; ``none`` gets count crops with nothing pasted.
    """
    labels = load_fashion_mnist(composer.fashion_mnist_dir, "train")[1]
    written = 0
    for c, cls in enumerate(FASHION_CLASSES):
        folder = out_dir / cls.name
        folder.mkdir(parents=True, exist_ok=True)
        for index in items[c][start:start + count]:
            rng = composer.rng(split, index)
            image, *_ = composer.compose(rng, [Item("train", index, int(labels[index]))])
            (folder / f"train_{index:05d}.jpg").write_bytes(jpeg_bytes(image, composer.jpeg_quality))
            written += 1
    folder = out_dir / NONE_CLASS
    folder.mkdir(parents=True, exist_ok=True)
    offset = 10**6  # apart from the item indices, which seed the class images of the same split
    for i in range(count):
        rng = composer.rng(split, offset + i)
        photo = composer.photos[int(rng.integers(len(composer.photos)))]
        image, _ = photo_crop(rng, photo, composer.image_size)
        (folder / f"none_{i:05d}.jpg").write_bytes(jpeg_bytes(image, composer.jpeg_quality))
        written += 1
    return written
