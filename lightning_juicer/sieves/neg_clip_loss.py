"""negCLIPLoss (Wang et al. 2024): the CLIP score minus the batch's contrastive normalisation, over random batches."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.errors import ConfigError
from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, Sieve, at_least
from lightning_juicer.sieves.scored import neg_clip_loss, top


@SIEVES.register("neg_clip_loss")
@dataclass
class NegClipLoss(Sieve):
    """Keep the highest negCLIPLoss, averaged over ``repeats`` random partitions into batches of ``batch_size``.

    Args:
        batch_size: random batch size B
        repeats: K random partitions averaged
        temperature: None: the reference model's (stored by the embeddings pass)
    """

    needs = ("image", "text")
    batch_size: int = 32768
    repeats: int = 10
    temperature: float | None = None

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "repeats")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"{KEY}.init_args.temperature: {self.temperature} must be > 0")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        temperature = self.temperature or candidates.temperature
        if not temperature:
            raise ConfigError(f"{KEY}.init_args.temperature: the embeddings carry no reference temperature; set it")
        scores = neg_clip_loss(candidates.arrays["image"], candidates.arrays["text"], temperature, self.batch_size,
                               self.repeats, seed)
        return Kept(top(scores, n_keep), {})
