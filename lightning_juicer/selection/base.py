"""The selection-strategy base, its registry and the budget: which k of an image's m patches the student sees.

A strategy is a small class with typed settings as constructor arguments, registered under a short
name in ``STRATEGIES``. Its class attribute ``needs`` says what it selects from, so a config that
cannot provide it is refused when it is read (``build_strategy``):

* ``"nothing"`` - only the grid (``full``, ``random``);
* ``"scores"``  - the governor's patch scores [B, m] (sidecars or on the fly);
* ``"features"`` - the governor's patch tokens [B, m, D] (on the fly only: sidecars do not store them).

Every strategy returns kept indices as a long tensor [B, k] in row-major grid order, sorted ascending,
no duplicates, with the same k = ``keep_count(m, r)`` for every sample of a batch (the batch contract:
no padding), or ``None`` for all patches. A score strategy selects a sample whose scores are not all
finite uniformly at random instead, and returns how many did as a 0-dim tensor on the scores' device
(no host sync in the training step; the caller decides when to read it).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.registry import Registry

NEEDS = ("nothing", "scores", "features")
STRATEGIES: Registry[SelectionStrategy] = Registry("selection strategy", "data.init_args.selection")


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """Number of patches kept at ratio r: k = round(r * m), at least 1."""
    return max(1, min(num_patches, round(keep_ratio * num_patches)))


def uniform_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """Uniform noise drawn on the generator's device (a CPU generator gives the same numbers anywhere), on ``device``."""
    drawn = torch.rand(shape, generator=generator, device=generator.device if generator is not None else device)
    return drawn if device is None else drawn.to(device)


def select_random(
    batch_size: int,
    num_patches: int,
    k: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniformly random k of m patches per sample (the paper's token-level Random*), sorted."""
    drawn = uniform_noise((batch_size, num_patches), generator, device)
    return drawn.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


def shape_only(batch_size: int, num_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The input of a strategy that needs nothing: an empty [B, m, 0] tensor (only its shape and device are read)."""
    return torch.empty(batch_size, num_patches, 0, device=device)


class SelectionStrategy:
    """Base of the patch selection strategies (see the module docstring).

    Subclasses set ``needs`` and implement ``select``; settings are constructor arguments, checked in
    ``check`` (called by ``build_strategy`` with the config key, so errors name it). ``stochastic`` is
    False for a strategy that draws no random numbers (evaluation then selects a whole batch at once
    instead of seeding each sample).
    """

    needs: ClassVar[str] = "nothing"
    stochastic: ClassVar[bool] = True
    registered_name: ClassVar[str]

    @property
    def name(self) -> str:
        """The registered short name (what results files record)."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def check(self, key: str) -> None:
        """Raise a ConfigError naming ``key`` (``<key>.init_args.<setting>``) for a bad setting."""

    def keeps_all(self, keep_ratio: float) -> bool:
        """True when every patch is kept (no ``keep`` tensor at all)."""
        return keep_ratio >= 1.0

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Kept indices [B, k], sorted, from ``inputs``: finite scores [B, m], features [B, m, D] or ``shape_only``."""
        raise NotImplementedError

    def __call__(
        self, inputs: torch.Tensor, keep_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | int]:
        """Kept indices [B, k] (None = all) at ratio r, and how many samples fell back to random patches."""
        if self.keeps_all(keep_ratio):
            return None, 0
        batch, num_patches = inputs.shape[:2]
        k = keep_count(num_patches, keep_ratio)
        if self.needs != "scores":
            return self.select(inputs, k, generator), 0
        bad = ~torch.isfinite(inputs).all(dim=1)
        keep = self.select(inputs.float().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0), k, generator)
        # Random picks for every row, used where the scores were bad: no host sync on the count (training step).
        fallback = select_random(batch, num_patches, k, generator, keep.device).to(keep.device)
        return torch.where(bad[:, None], fallback, keep), bad.sum()

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"


def build_strategy(
    spec: str | SelectionStrategy, key: str, provided: Collection[str] = NEEDS, source: str = ""
) -> SelectionStrategy:
    """A checked strategy from a registered short name (default settings) or an instance (jsonargparse class_path).

    ``provided`` is what the caller can give the strategy (a subset of ``NEEDS``); a strategy needing
    more, an unknown name or a bad setting is a one-line ConfigError naming ``key`` (``source`` says
    where the inputs come from, for the message).
    """
    strategy = STRATEGIES.build(spec, key)
    if not isinstance(strategy, SelectionStrategy):
        raise ConfigError(f"{key}: {strategy!r} is not a selection strategy; choose from {', '.join(STRATEGIES)}")
    if strategy.needs not in provided:
        where = f" {source}" if source else ""
        usable = ", ".join(name for name in STRATEGIES if STRATEGIES.get(name).needs in provided)
        raise ConfigError(f"{key}: {strategy.name!r} needs the governor's patch {strategy.needs}, which{where} "
                          f"cannot provide; choose from {usable}")
    strategy.check(key)
    return strategy
