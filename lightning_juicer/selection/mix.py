"""``mix``: the paper's "mix" of selections (Tab. 5b: uniform 13.47, topk 15.54, stratified 15.61, mix 15.47).

The paper names the arm and its figure but does not define it. Our reading: a mix *of selections over
the data* - each image draws one of the component strategies (by default ``topk``, ``stratified`` and
``random`` with equal probability) and keeps that strategy's k patches, so the student sees
object-centred, score-spread and uniform views of the data in one run, and every image of a batch
still keeps the same k (the batch contract). Splitting the budget *within* an image is the other
reading; ``topk_context`` does that for top-k + random.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy, uniform_noise


@STRATEGIES.register("mix")
class Mix(SelectionStrategy):
    """Per image, one of ``components`` drawn with probability proportional to ``weights`` (equal when unset).

    Components are registered strategies that select from scores or from nothing (not ``full``, which
    keeps a different number of patches, not ``mix`` itself, not feature strategies). Every component
    selects for the whole batch from the same generator, in order, then each image takes its drawn one,
    so the result is a function of the generator alone (reproducible, batch-size independent per row
    only when evaluation seeds each sample, as it does).
    """

    needs = "scores"

    def __init__(
        self, components: Sequence[str] = ("topk", "stratified", "random"), weights: Sequence[float] | None = None
    ) -> None:
        self.components = tuple(components)
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self._parts: list[SelectionStrategy] | None = None

    def check(self, key: str) -> None:
        for name in self.components:
            part = STRATEGIES.get(name, f"{key}.init_args.components")
            if name in ("full", "mix") or part.needs not in ("nothing", "scores"):
                raise ConfigError(f"{key}.init_args.components: {name!r} cannot be mixed (keeps all patches, "
                                  "is a mix or needs patch features); use topk, stratified, random or topk_context")
        if not self.components:
            raise ConfigError(f"{key}.init_args.components: empty; name at least one strategy")
        if self.weights is not None and (
            len(self.weights) != len(self.components) or min(self.weights) < 0 or sum(self.weights) <= 0
        ):
            raise ConfigError(f"{key}.init_args.weights: {list(self.weights)} must be one non-negative weight per "
                              f"component ({len(self.components)}) with a positive sum")

    @property
    def parts(self) -> list[SelectionStrategy]:
        if self._parts is None:
            self._parts = [STRATEGIES.build(name) for name in self.components]
        return self._parts

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = inputs.shape[0]
        weights = self.weights or (1.0,) * len(self.components)
        drawn = uniform_noise((batch,), generator, inputs.device).double()
        choice = torch.zeros(batch, dtype=torch.long, device=inputs.device)
        for bound in itertools.accumulate(w / sum(weights) for w in weights[:-1]):  # host floats: no copy, no sync
            choice += drawn >= bound
        picks = torch.stack([part.select(inputs, k, generator) for part in self.parts])  # [C, B, k]
        return picks.gather(0, choice[None, :, None].expand(1, batch, k))[0]
