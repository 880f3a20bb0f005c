"""The real images the benchmark is made of: scikit-image's bundled photographs and Fashion-MNIST.

Both install offline and nothing is downloaded:

* **Photographs** (contexts): the ``skimage.data`` images that ship inside scikit-image's wheel and are
  real camera photographs (checked with scikit-image 0.26; the others need a download, or are drawings,
  phantoms or generated patterns: ``binary_blobs``, ``checkerboard``, ``colorwheel``, ``logo``,
  ``shepp_logan_phantom``, ``horse``, ``microaneurysms`` (102 px) and ``lfw_subset`` (25 px) are
  left out). ``PHOTOS`` lists them with the phrases captions use for them.
* **Objects**: Fashion-MNIST (70,000 28 x 28 grey product photographs on black, 10 classes), read from
  the idx files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or any
  folder holding the four ``*-idx*-ubyte[.gz]`` files (torchvision's ``FashionMNIST/raw`` included).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lightning_juicer.errors import ConfigError

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Photo:
    """One bundled photograph: its ``skimage.data`` loader name and the noun phrases that name what it shows."""

    name: str
    phrases: tuple[str, ...]


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", ("an astronaut", "a woman in a space suit", "an astronaut portrait")),
    Photo("brick", ("a brick wall", "bricks", "an old brick wall")),
    Photo("camera", ("a cameraman", "a man with a camera", "a photographer on a tripod")),
    Photo("cell", ("cells under a microscope", "a microscope image", "living cells")),
    Photo("chelsea", ("a cat", "a tabby cat", "a kitten")),
    Photo("clock", ("a clock", "a wall clock", "an old clock")),
    Photo("coffee", ("a cup of coffee", "a coffee mug", "an espresso")),
    Photo("coins", ("coins", "old coins", "a pile of coins")),
    Photo("grass", ("grass", "a lawn", "blades of grass")),
    Photo("gravel", ("gravel", "pebbles", "a gravel path")),
    Photo("hubble_deep_field", ("galaxies", "deep space", "the night sky")),
    Photo("immunohistochemistry", ("a tissue sample", "stained tissue", "a microscope slide")),
    Photo("moon", ("the moon", "the lunar surface", "moon craters")),
    Photo("page", ("a page of text", "a printed page", "a book page")),
    Photo("retina", ("a retina scan", "an eye scan", "the back of an eye")),
    Photo("rocket", ("a rocket", "a rocket launch pad", "a space rocket")),
    Photo("stereo_motorcycle", ("a motorcycle", "a motorbike", "a parked motorcycle")),
    Photo("text", ("a sign with text", "handwritten text", "lettering")),
)
PHOTO_NAMES: tuple[str, ...] = tuple(p.name for p in PHOTOS)


@dataclass(frozen=True)
class ItemClass:
    """A Fashion-MNIST class: its official label, a folder slug, the zero-shot class name and caption synonyms."""

    label: str
    slug: str
    name: str
    synonyms: tuple[str, ...]


FASHION_CLASSES: tuple[ItemClass, ...] = (
    ItemClass("T-shirt/top", "tshirt", "t-shirt", ("a t-shirt", "a tee", "a top", "a tshirt")),
    ItemClass("Trouser", "trousers", "trousers", ("trousers", "a pair of trousers", "pants", "jeans")),
    ItemClass("Pullover", "pullover", "pullover", ("a pullover", "a sweater", "a jumper")),
    ItemClass("Dress", "dress", "dress", ("a dress", "a gown", "a summer dress")),
    ItemClass("Coat", "coat", "coat", ("a coat", "a jacket", "an overcoat")),
    ItemClass("Sandal", "sandal", "sandal", ("a sandal", "a pair of sandals", "a flip-flop")),
    ItemClass("Shirt", "shirt", "shirt", ("a shirt", "a button-down shirt", "a blouse")),
    ItemClass("Sneaker", "sneaker", "sneaker", ("a sneaker", "a trainer", "a running shoe")),
    ItemClass("Bag", "bag", "bag", ("a bag", "a handbag", "a purse", "a tote bag")),
    ItemClass("Ankle boot", "ankle_boot", "ankle boot", ("an ankle boot", "a boot", "a bootie")),
)


def available_photos() -> tuple[str, ...]:
    """The ``PHOTOS`` that load here (scikit-image installed and the file bundled)."""
    out = []
    for name in PHOTO_NAMES:
        try:
            load_photo(name)
        except (ConfigError, OSError, ModuleNotFoundError):
            continue
        out.append(name)
    return tuple(out)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as uint8 RGB [H, W, 3] (grey photographs repeated over 3 channels)."""
    if name not in PHOTO_NAMES:
        raise ConfigError(f"photos: {name!r} is not one of the bundled photographs {PHOTO_NAMES}")
    try:
        import skimage.data
    except ImportError:
        raise ConfigError("photos: scikit-image is not installed (pip install -e '.[real]')") from None
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs: the left view
        image = image[0]
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ConfigError(f"photos: skimage.data.{name} is {image.dtype}, not an 8-bit photograph")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3])
    image.setflags(write=False)
    return image


def _idx_file(folder: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in folder; one-line error naming the folder when missing."""
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            return path
    raise ConfigError(
        f"fashion_mnist_dir: {folder} has no {stem}[.gz] (install Debian's dataset-fashion-mnist or point "
        "fashion_mnist_dir at a folder holding the four idx files)"
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx-ubyte array (optionally gzipped) as uint8 with the header's shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise ConfigError(f"fashion_mnist_dir: {path} is not an idx-ubyte file with {ndim} dimension(s)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ConfigError(f"fashion_mnist_dir: {path} is truncated ({data.size} values for shape {shape})")
    return data.reshape(shape)


@lru_cache(maxsize=4)
def load_fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the ``train`` (60,000) or ``test`` (10,000) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"fashion_mnist_dir: folder not found: {root} (apt-get install dataset-fashion-mnist)")
    images = _read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"), 3)
    labels = _read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"), 1)
    if len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_CLASSES):
        raise ConfigError(f"fashion_mnist_dir: {root}: {split} images and labels do not match")
    return images, labels
