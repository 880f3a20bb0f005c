"""A generated dataset's folder: built once into a temporary sibling and moved into place whole.

A folder is complete iff its marker file (``dataset.json``) exists; the marker is written last, so
an interrupted build leaves no marker behind, and a completed one is never rebuilt. Used by both
generators (``lightning_juicer.synthetic``, ``lightning_juicer.realphoto``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.writers import shard_pattern


@dataclass(frozen=True)
class DatasetPaths:
    """The parts every generated dataset has: training/validation shards (brace patterns), the zero-shot
    ImageFolder with its ``classnames.txt`` and the Karpathy-style retrieval set."""

    root: Path
    train_shards: str
    val_shards: str
    zeroshot_dir: Path
    classnames_file: Path
    retrieval_images: Path
    retrieval_json: Path

    @staticmethod
    def fields_of(root: Path, counts: dict[str, int]) -> dict[str, Any]:
        """The common fields of a dataset at root (``train/``, ``val/``, ``eval/zeroshot``, ``eval/retrieval``),
        shard counts from the marker's ``counts``; subclasses add their own parts."""
        zeroshot, retrieval = root / "eval" / "zeroshot", root / "eval" / "retrieval"
        return dict(root=root, train_shards=shard_pattern(root / "train", counts["train_shards"]),
                    val_shards=shard_pattern(root / "val", counts["val_shards"]), zeroshot_dir=zeroshot,
                    classnames_file=zeroshot / "classnames.txt", retrieval_images=retrieval / "images",
                    retrieval_json=retrieval / "karpathy_test.json")


def is_complete(root: str | Path, marker: str) -> bool:
    """True iff root holds a completed dataset (its marker file exists)."""
    return (Path(root) / marker).is_file()


def read_marker(root: str | Path, marker: str) -> dict[str, Any]:
    """The marker's JSON body of a completed dataset."""
    return json.loads((Path(root) / marker).read_text(encoding="utf-8"))


def refuse_foreign(root: Path, marker: str, hint: str, key: str = "") -> None:
    """ConfigError when root exists and is not an empty folder (incomplete or foreign data)."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        prefix = f"{key}: " if key else ""
        raise ConfigError(f"{prefix}{root} is not empty but has no {marker} (incomplete or foreign data); {hint}")


def build_atomically(root: Path, marker: str, generate: Callable[[Path], None]) -> None:
    """Run ``generate(folder)`` in ``<root>.tmp-<pid>`` and move the folder to root (a concurrent builder's
    complete result is kept); the temporary folder is removed whatever happens."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        generate(tmp)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root, marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
