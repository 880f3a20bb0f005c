"""NormSim (Wang et al. 2024): keep the samples whose images are most similar to a target set's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.shards import expand_shards
from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, Sieve
from lightning_juicer.io.embeddings import read_embeddings
from lightning_juicer.sieves.scored import norm_sim, top


@SIEVES.register("norm_sim")
@dataclass
class NormSim(Sieve):
    """Keep the highest p-norm of each sample's cosines to the target set's image embeddings.

    Args:
        target: embeddings files of the target set (e.g. ImageNet train images), required
        p: the norm of the cosines, "2" or "inf"
    """

    needs = ("image",)
    target: str | list[str] | None = None
    p: Literal["2", "inf"] = "2"

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigError(f"{KEY}.init_args.target: norm_sim needs the embeddings files of a target set "
                              "(run the embeddings pass on it)")
        if str(self.p) not in ("2", "inf"):
            raise ConfigError(f"{KEY}.init_args.p: {self.p!r} is not one of ('2', 'inf')")
        self.p = str(self.p)  # type: ignore[assignment]  # a command line's 2 is the string "2"

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        key = f"{KEY}.init_args.target"
        target = read_embeddings(expand_shards(self.target, key))
        if "image" not in target.arrays:
            raise ConfigError(f"{key}: the target embeddings hold no image embeddings")
        return Kept(top(norm_sim(candidates.arrays["image"], target.arrays["image"], float(self.p)), n_keep), {})
