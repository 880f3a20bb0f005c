"""Shared evaluation machinery: per-rank loaders, eval-mode encoding, and gathering rows across ranks.

Each rank encodes a disjoint share of the set; rows carry their sample index, are gathered
(padded to equal length, the padding marked by index -1), de-duplicated by index and sorted by
it, so every rank ends with the same tensors whatever the world size.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_juicer.selection import SelectionStrategy, build_strategy, shape_only

AllGather = Callable[[torch.Tensor], torch.Tensor]


class EvalCollate:
    """Stack eval samples; unreadable images become zeros with ``valid`` False."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, samples: list[dict]) -> dict:
        blank = torch.zeros(3, self.image_size, self.image_size)
        batch = {
            "image": torch.stack([s["image"] if s["image"] is not None else blank for s in samples]),
            "valid": torch.tensor([s["image"] is not None for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if "label" in samples[0]:
            batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        if "captions" in samples[0]:
            batch["captions"] = [list(s["captions"]) for s in samples]
        return batch


def rank_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """This rank's sample indices, padded with wrapped-around duplicates so all ranks get the same count."""
    total = math.ceil(num_samples / world_size) * world_size
    padded = list(range(num_samples)) + [i % num_samples for i in range(total - num_samples)]
    return padded[rank::world_size]


def eval_loader(
    dataset: Dataset, image_size: int, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """DataLoader over this rank's share of an evaluation set, in order."""
    if isinstance(dataset, IterableDataset):
        dataset.distribute(rank, world_size)
        num_workers = min(num_workers, len(dataset.urls))
    else:
        dataset = Subset(dataset, rank_indices(len(dataset), rank, world_size))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=EvalCollate(image_size)
    )


def sample_generator(seed: int, index: int) -> torch.Generator:
    """CPU generator of one eval sample, so its patches do not depend on sharding or batch size."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class SampleKeep:
    """Kept patches for an eval batch at ``keep_ratio`` by a strategy that needs nothing (``full`` / ``random``),
    seeded per sample index."""

    def __init__(self, selection: str | SelectionStrategy, num_patches: int, keep_ratio: float, seed: int = 0,
                 provided: tuple[str, ...] = ("nothing",)) -> None:
        self.strategy = build_strategy(selection, "selection", provided, "evaluation without a governor")
        self.num_patches, self.keep_ratio, self.seed = num_patches, keep_ratio, seed
        self.fallbacks = 0

    def __call__(self, index: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.strategy.keeps_all(self.keep_ratio):
            return None
        return self.seeded(index, shape_only(len(index), self.num_patches))

    def seeded(self, index: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
        """Selection from ``inputs`` [B, m, ...]: per sample with its own generator (batch- and shard-independent),
        or for the whole batch at once when the strategy draws no random numbers. Counts random fallbacks."""
        if not self.strategy.stochastic:
            keep, bad = self.strategy(inputs, self.keep_ratio)
        else:
            picks = [self.strategy(row[None], self.keep_ratio, sample_generator(self.seed, i))
                     for i, row in zip(index.tolist(), inputs)]
            keep, bad = torch.cat([k for k, _ in picks]), sum(b for _, b in picks)
        self.fallbacks += bad
        return keep


class ScoreKeep(SampleKeep):
    """Kept patches for an eval batch from the governor: a strategy that needs scores (``topk``, ``stratified``,
    ``mix``, ...) or patch features (``cluster``), each sample seeded by its index unless the strategy is
    deterministic (``topk``: the whole batch at once).

    ``selector`` is an ``OnlineSelector`` (governor.online) placed on the images' device; the images are the
    normalised eval images. Samples whose scores are not finite fall back to random patches, counted in ``fallbacks``.
    """

    def __init__(self, selector, num_patches: int, seed: int = 0) -> None:
        super().__init__(selector.strategy, num_patches, selector.keep_ratio, seed, ("nothing", "scores", "features"))
        self.selector = selector

    def __call__(self, index: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.strategy.keeps_all(self.keep_ratio):
            return None
        return self.seeded(index, self.selector.inputs(image))


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode afterwards, under no_grad."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def unique_rows(ids: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first row of each distinct id (ids [n] or [n, k]), sorted by id."""
    if len(ids) == 0:
        return (ids, *rows)
    uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return (ids[first], *(r[first] for r in rows))


def gather_rows(
    all_gather: AllGather | None, world_size: int, ids: torch.Tensor, *rows: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """All ranks' rows (ids first), padding removed, de-duplicated and sorted by id.

    ``all_gather`` is ``trainer.strategy.all_gather`` (returns [world, ...]); tensors may differ in
    length between ranks and be empty on some.
    """
    if world_size > 1:
        assert all_gather is not None
        tensors = (ids, *rows)
        dims = [[t.shape[0], t.shape[1] if t.dim() > 1 else 0] for t in tensors]
        shapes = all_gather(torch.tensor(dims, device=ids.device)).reshape(world_size, len(tensors), 2)
        length = int(shapes[:, 0, 0].max())
        gathered = []
        for t, width in zip(tensors, shapes[:, :, 1].amax(dim=0).tolist()):
            fill = -1 if t is ids else 0
            padded = torch.full((length, width) if t.dim() > 1 else (length,), fill, dtype=t.dtype, device=t.device)
            padded[: len(t)] = t
            gathered.append(all_gather(padded).flatten(0, 1))
        real = (gathered[0] if gathered[0].dim() == 1 else gathered[0][:, 0]) >= 0
        ids, *rows = (g[real] for g in gathered)
    return unique_rows(ids, *rows)


def encode_images(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    keep: SampleKeep | None = None,
    forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
    tokenizer: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Encode this rank's share: image features, and with a tokenizer the captions of readable images.

    Images take the dtype of the model's parameters (for ``16-true`` / ``bf16-true``). Returns
    ``index``, ``valid`` (0/1), ``image_features`` and either ``label`` (no tokenizer) or
    ``text_ids`` [t, 2] = (image index, caption slot) with ``text_features``; on ``device``, float32.
    """
    keys = ["index", "valid", "image_features"] + (["label"] if tokenizer is None else ["text_ids", "text_features"])
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    dtype = next(model.parameters()).dtype
    for batch in loader:
        image = batch["image"].to(device, dtype if dtype.is_floating_point else None, non_blocking=True)
        kept = keep(batch["index"], image) if keep is not None else None
        with forward_context():
            features = model.encode_image(image, None if kept is None else kept.to(device))
        out["image_features"].append(features.float())
        out["index"].append(batch["index"].to(device))
        out["valid"].append(batch["valid"].long().to(device))
        if tokenizer is None:
            out["label"].append(batch["label"].to(device))
            continue
        pairs = [
            (i, slot, caption)
            for i, ok, captions in zip(batch["index"].tolist(), batch["valid"].tolist(), batch["captions"])
            if ok
            for slot, caption in enumerate(captions)
        ]
        if pairs:
            with forward_context():
                text = model.encode_text(tokenizer([c for _, _, c in pairs]).to(device))
            out["text_features"].append(text.float())
            out["text_ids"].append(torch.tensor([(i, s) for i, s, _ in pairs], dtype=torch.long, device=device))
    return {k: torch.cat(v) if v else _empty(k, device) for k, v in out.items()}


def _empty(key: str, device: torch.device) -> torch.Tensor:
    """No rows for ``key`` on this rank (width 0: the gather takes the width from the other ranks)."""
    if key.endswith("features"):
        return torch.zeros(0, 0, device=device)
    return torch.zeros((0, 2) if key == "text_ids" else (0,), dtype=torch.long, device=device)
