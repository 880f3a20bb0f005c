"""Evaluation set readers. Every reader yields ``{"index", "image", "label" | "captions"}`` samples.

Layouts:

- classification, ImageFolder: ``root/<class folder>/<image>``; classes are the sorted folders.
  Names come from ``classnames``: a text file (one name per line, in sorted-folder order, as many
  lines as folders), or ``imagenet`` / ``imagenet-r`` / ``imagenet-a``, in which case the folders
  must be exactly that set's ImageNet wnids (``n01440764``), each named by open_clip's
  ``IMAGENET_CLASSNAMES``: ImageNet-R/-A get their 200-class subsets of the 1k names and a
  200-way classifier (the CLIP protocol). Without ``classnames``: ``root/classnames.txt`` if
  present, else the 1k names if every folder is an ImageNet-1k wnid, else the folder names.
- classification, webdataset: shards with an image (``jpg``/``jpeg``/``png``/``webp``) and ``cls``
  (the integer label, as CLIP_benchmark's shards hold it); ``classnames`` is required (a file or
  one of the ImageNet names; for ImageNet-R/-A shards with labels 0..199 use ``imagenet-r``/``-a``).
- retrieval, Karpathy JSON + image folder: ``dataset_coco.json`` / ``dataset_flickr30k.json``
  (``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``), images at
  ``root/filepath/filename`` or ``root/filename``; or the ALBEF/BLIP list
  ``[{"image": "val2014/x.jpg", "caption": [...]}]`` with images at ``root/image``.
- retrieval, webdataset: an image plus ``txt`` holding the captions one per line (CLIP_benchmark),
  or a JSON list of strings.

An image that cannot be read, or a sample without captions or label, comes back with
``image=None``: the caller counts it as skipped instead of silently shrinking the set.
"""

from __future__ import annotations

import json
import logging
import os
import pkgutil
from pathlib import Path
from typing import Callable, Iterator

import torch
import webdataset as wds
from open_clip import IMAGENET_CLASSNAMES
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from lightning_juicer.io.decode import DraftedDecoder
from lightning_juicer.io.shards import expand_shards
from lightning_juicer.io.tars import IMAGE_EXTS
from lightning_juicer.errors import ConfigError
from lightning_juicer.io.classnames import read_classnames

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = IMG_EXTENSIONS  # torchvision ImageFolder's: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp
IMAGENET_SETS = ("imagenet", "imagenet-r", "imagenet-a")
_LOG_FIRST = 10


def _timm_info(name: str) -> list[str]:
    """Lines of one of timm's ImageNet metadata files (wnid lists, subset indices)."""
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:
        raise FileNotFoundError(name)
    return data.decode("utf-8").split()


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order (the order of ``IMAGENET_CLASSNAMES``)."""
    return _timm_info("imagenet_synsets.txt")


def imagenet_subset(name: str) -> tuple[list[str], list[str]]:
    """(wnids, class names) of ``imagenet`` (1k) or the 200-class ``imagenet-r`` / ``imagenet-a`` subsets."""
    wnids = imagenet_wnids()
    if name == "imagenet":
        indices = list(range(1000))
    elif name in ("imagenet-r", "imagenet-a"):
        indices = [int(i) for i in _timm_info(f"imagenet_{name[-1]}_indices.txt")]
    else:
        raise ValueError(f"unknown ImageNet class set {name!r}; choose from {IMAGENET_SETS}")
    return [wnids[i] for i in indices], [IMAGENET_CLASSNAMES[i] for i in indices]


def load_image(source: str | Path | bytes, transform: Callable, what: str) -> torch.Tensor | None:
    """Decode and transform an image file or bytes; None (logged) when it cannot be read."""
    try:
        return transform(DraftedDecoder(transform)(source))
    except Exception as exn:  # noqa: BLE001 - any decode failure is a counted skip
        _warn("evaluation image %s unreadable, counted as skipped: %r", what, exn)
        return None


_warned = [0]


def _warn(message: str, *args: object) -> None:
    """Log a skipped evaluation sample; only the first few per process, the count is reported anyway."""
    _warned[0] += 1
    if _warned[0] <= _LOG_FIRST:
        log.warning(message, *args)


class ImageFolderClassification(ImageFolder):
    """Classification set in ImageFolder layout (torchvision's ``ImageFolder``: sorted class folders, files by
    extension), with class names from a file or the ImageNet wnids; an unreadable image is a counted skip."""

    def __init__(self, root: str | Path, classnames: str | None, transform: Callable, key: str = "root",
                 classnames_key: str = "classnames") -> None:
        if not Path(root).is_dir():
            raise ConfigError(f"{key}: evaluation folder not found: {Path(root)}")
        try:
            super().__init__(str(root), allow_empty=True)
        except FileNotFoundError:
            raise ConfigError(f"{key}: {Path(root)} has no class folders (expected root/<class>/<image>)") from None
        self.root = Path(root)
        self.classnames = self._names(self.classes, classnames, classnames_key)
        self.samples = [(Path(path), label) for path, label in self.samples]
        if not self.samples:
            raise ConfigError(f"{key}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.transform = transform

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """Class folders, sorted, hidden ones (``.name``) left out."""
        classes, _ = super().find_classes(directory)
        classes = [c for c in classes if not c.startswith(".")]
        return classes, {c: i for i, c in enumerate(classes)}

    def _names(self, folders: list[str], classnames: str | None, key: str) -> list[str]:
        if classnames is None:
            default = self.root / "classnames.txt"
            if default.is_file():
                classnames = str(default)
            else:
                lookup = dict(zip(*imagenet_subset("imagenet")))
                if all(f in lookup for f in folders):
                    return [lookup[f] for f in folders]
                return [f.replace("_", " ") for f in folders]
        if classnames in IMAGENET_SETS:
            wnids, names = imagenet_subset(classnames)
            lookup = dict(zip(wnids, names))
            unknown = [f for f in folders if f not in lookup]
            if unknown:
                raise ConfigError(
                    f"{key}: {classnames!r} maps wnid folders to class names, but {self.root} has folders "
                    f"that are not {classnames} wnids (e.g. {unknown[0]!r})"
                )
            if len(folders) != len(wnids):
                raise ConfigError(
                    f"{key}: {self.root} has {len(folders)} class folders but {classnames} has {len(wnids)} "
                    "classes; a partial copy would not be comparable"
                )
            return [lookup[f] for f in folders]
        names = read_classnames(classnames, key)
        if len(names) != len(folders):
            raise ConfigError(
                f"{key}: {classnames} lists {len(names)} class names but {self.root} has {len(folders)} "
                "class folders"
            )
        return names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override] - decodes through load_image, as every reader
        path, label = self.samples[index]
        return {"index": index, "image": load_image(path, self.transform, str(path)), "label": label}


def _karpathy_entries(data: object, split: str, key: str) -> list[tuple[str, str | None, list[str]]]:
    """(filename, filepath or None, captions) per image of one split, from either JSON flavour."""
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        splits = sorted({str(im.get("split")) for im in data["images"]})
        entries = [
            (im["filename"], im.get("filepath"), [s["raw"].strip() for s in im.get("sentences", [])])
            for im in data["images"]
            if im.get("split") == split
        ]
        if not entries:
            raise ConfigError(f"{key}: no images with split {split!r} (splits present: {splits})")
        return entries
    if isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:
        return [
            (im["image"], None, [c.strip() for c in ([im["caption"]] if isinstance(im["caption"], str)
                                                      else im["caption"])])
            for im in data
        ]
    raise ConfigError(
        f"{key}: not a Karpathy split file ({{'images': [...]}}) nor a list of {{'image', 'caption'}} records"
    )


class KarpathyRetrieval(Dataset):
    """Image-caption retrieval set from a Karpathy-split JSON (COCO 5k / Flickr30k 1k test) and an image folder."""

    def __init__(self, annotations: str | Path, root: str | Path, transform: Callable, split: str = "test",
                 captions_per_image: int | None = 5, key: str = "root", annotations_key: str = "annotations") -> None:
        annotations, self.root = Path(annotations), Path(root)
        if not annotations.is_file():
            raise ConfigError(f"{annotations_key}: annotation file not found: {annotations}")
        if not self.root.is_dir():
            raise ConfigError(f"{key}: image folder not found: {self.root}")
        try:
            data = json.loads(annotations.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exn:
            raise ConfigError(f"{annotations_key}: {annotations} is not valid JSON ({exn})") from None
        self.items: list[tuple[Path, list[str]]] = []
        for filename, filepath, captions in _karpathy_entries(data, split, annotations_key):
            path = self.root / filepath / filename if filepath else self.root / filename
            if filepath and not path.is_file() and (self.root / filename).is_file():
                path = self.root / filename
            self.items.append((path, [c for c in captions if c][:captions_per_image]))
        missing = sum(not p.is_file() for p, _ in self.items)
        if missing == len(self.items):
            raise ConfigError(
                f"{key}: none of the {len(self.items)} images of {annotations.name} is under {self.root} "
                f"(first expected at {self.items[0][0]})"
            )
        if missing:
            log.warning("%d of %d retrieval images missing under %s; they count as skipped", missing,
                        len(self.items), self.root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, captions = self.items[index]
        image = load_image(path, self.transform, str(path)) if captions else None
        return {"index": index, "image": image, "captions": captions}


def parse_captions(raw: bytes) -> list[str]:
    """Captions of a webdataset ``txt`` member: a JSON list of strings, else one caption per line."""
    text = raw.decode("utf-8").strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return [v.strip() for v in value if v.strip()]
        except json.JSONDecodeError:
            pass
    return [line.strip() for line in text.splitlines() if line.strip()]


class WebDatasetEval(IterableDataset):
    """Classification (``cls``) or retrieval (``txt``) samples from webdataset shards, split over ranks and workers.

    Ranks take every ``world_size``-th sample of each shard (so any shard count balances), workers
    take whole shards. A sample's index is ``shard << 32 | position``, unique and independent of
    the split, so gathered results can be de-duplicated and ordered. Every rank reads every shard
    but decodes only its own samples.
    """

    def __init__(self, shards: str | list[str], task: str, transform: Callable, key: str = "root",
                 captions_per_image: int | None = 5) -> None:
        if task not in ("classification", "retrieval"):
            raise ValueError(f"unknown task {task!r}")
        self.urls = expand_shards(shards, key)
        self.task = task
        self.transform = transform
        self.captions_per_image = captions_per_image
        self.rank, self.world_size = 0, 1

    def distribute(self, rank: int, world_size: int) -> WebDatasetEval:
        """Read only this rank's share of the samples."""
        self.rank, self.world_size = rank, world_size
        return self

    def _decode(self, sample: dict, index: int) -> dict:
        what = f"{sample.get('__url__')}:{sample.get('__key__')}"
        data = next((sample[k] for k in IMAGE_EXTS if k in sample), None)
        out: dict = {"index": index, "image": None}
        if self.task == "classification":
            try:
                out["label"] = int(sample["cls"].decode("utf-8").strip())
            except (KeyError, ValueError, UnicodeDecodeError):
                out["label"] = -1
                _warn("evaluation sample %s has no integer cls, counted as skipped", what)
                return out
        else:
            try:
                out["captions"] = parse_captions(sample["txt"])[: self.captions_per_image]
            except (KeyError, UnicodeDecodeError):
                out["captions"] = []
            if not out["captions"]:
                _warn("evaluation sample %s has no captions, counted as skipped", what)
                return out
        if data is None:
            _warn("evaluation sample %s has no image (%s), counted as skipped", what, "/".join(IMAGE_EXTS))
            return out
        out["image"] = load_image(data, self.transform, what)
        return out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in range(worker, len(self.urls), workers):
            samples = wds.tarfile_samples([{"url": self.urls[shard]}])
            for position, sample in enumerate(samples):
                if position % self.world_size == self.rank:
                    yield self._decode(sample, (shard << 32) | position)


def is_shard_spec(spec: str) -> bool:
    """True for a webdataset shard spec (``.tar`` path, brace pattern, ``::`` join or remote URL)."""
    return not os.path.isdir(spec) and (".tar" in spec or "{" in spec or "::" in spec or "://" in spec
                                        or spec.startswith("pipe:"))
