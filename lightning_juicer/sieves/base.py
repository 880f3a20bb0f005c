"""The sieve extension point: a ``Sieve`` base class, the ``SIEVES`` registry and what a sieve returns.

A sieve is a dataclass holding only its own parameters, registered under a short name::

    @SIEVES.register("my_sieve")
    @dataclass
    class MySieve(Sieve):
        needs = ("image",)              # embedding columns it reads; () = none (runs from the shard list)
        strength: float = 1.0

        def keep(self, candidates, n_keep, seed):
            scores = candidates.arrays["image"] @ ...
            return Kept(top(scores, n_keep), {})

The sieve command (``sieves/command.py``) accepts it as ``--sieve my_sieve --sieve.init_args.strength 2``
once its module is imported (the built-in sieves are imported by ``lightning_juicer.sieves``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np

from lightning_juicer.errors import ConfigError
from lightning_juicer.registry import Registry

KEY = "sieve"  # the config key of the sieve; its parameters are sieve.init_args.<name>


class Kept(NamedTuple):
    """Kept row indices (ascending) and counts for the keep list's manifest."""

    indices: np.ndarray
    counts: dict[str, int]


@dataclass
class Candidates:
    """The rows a sieve chooses among: the embedding columns it ``needs`` (row-aligned, float32, each row
    L2-normalised: the sieve runner normalises them once, in place) and their metadata."""

    count: int
    arrays: dict[str, np.ndarray]
    temperature: float | None = None  # the reference model's (embeddings pass), for negCLIPLoss

    def __len__(self) -> int:
        return self.count

    def release(self, name: str) -> np.ndarray:
        """Take a column out (the sieve is done with it): its memory is freed once the sieve drops it too."""
        return self.arrays.pop(name)


class Sieve(ABC):
    """A sample-level sieve: given the candidates, the indices of ``n_keep`` of them to keep."""

    #: Embedding columns of the embeddings files the sieve reads ("image", "text": the reference model's;
    #: "cls": the governor's). Empty: the sieve needs no embeddings and can run from the shard list alone.
    needs: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        """``n_keep`` (> 0) row indices of ``candidates``, ascending, and counts for the keep list."""

    def columns(self) -> tuple[str, ...]:
        """The columns this configured sieve reads (``needs``, resolved for sieves with a choice of embedding)."""
        return tuple(self.needs)

    def params(self) -> dict[str, Any]:
        """The sieve's parameters, as recorded in the keep list."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    @property
    def name(self) -> str:
        """The registered short name (or the class path of an unregistered subclass)."""
        return vars(type(self)).get("registered_name") or f"{type(self).__module__}.{type(self).__qualname__}"


SIEVES: Registry[Sieve] = Registry("sieve", KEY)


def at_least(owner: Any, minimum: int, *names: str) -> None:
    """A ConfigError naming ``sieve.init_args.<name>`` when one of the fields is below ``minimum``."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{KEY}.init_args.{name}: {value} must be >= {minimum}")


@dataclass
class OnEmbedding(Sieve, ABC):
    """Base of the sieves that work on one embedding column of the user's choice, with faiss (CPU or GPU).

    Args:
        embedding: the embedding to work on: image (the reference model's) or cls (the governor's)
        gpu: faiss on the GPU (needs the faiss-gpu build)
    """

    embedding: Literal["image", "cls"] = "image"
    gpu: bool = False

    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.embedding, *self.needs)))

    def __post_init__(self) -> None:
        if self.embedding not in ("image", "cls"):
            raise ConfigError(f"{KEY}.init_args.embedding: {self.embedding!r} is not one of ('image', 'cls')")


@dataclass
class KMeansSieve(OnEmbedding, ABC):
    """Base of the sieves on a spherical k-means of the embedding (Cluster, SemDeDup, D4).

    Args:
        clusters: k-means clusters
        niter: k-means iterations
    """

    clusters: int = 100
    niter: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "clusters", "niter")
