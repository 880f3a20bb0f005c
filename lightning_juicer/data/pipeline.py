"""The webdataset stream: shard assignment per rank and worker, decoding, batching, epoch length.

Every rank runs exactly ``num_batches`` batches per epoch whatever its shard count: each
worker reads an endless stream (its own shards cycled in a new order every pass, or shards
resampled with replacement) that ``with_epoch`` cuts at a fixed number of batches, so an
uneven shard split cannot leave one rank waiting in a collective, and batches run across
pass boundaries, so no sample is lost to a partial last batch.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from typing import Callable, Iterator

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_juicer.data.drops import DropCounter
from lightning_juicer.errors import ConfigError

SAMPLING_MODES = ("disjoint", "resampled")

# Lightning warns that an IterableDataset's __len__ may be wrong with several workers; here each
# worker is cut at exactly num_batches / workers batches, so the length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


class RankWorkerSeed:
    """Seed for ResampledShards that differs per rank and DataLoader worker (picklable)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self) -> int:
        info = get_worker_info()
        return self.rank * 1000 + (info.id if info is not None else 0)


class CycledShards(IterableDataset):
    """This worker's share of ``urls`` (webdataset's ``split_by_worker``), repeated forever, reshuffled every pass."""

    def __init__(self, urls: list[str], seed: int) -> None:
        super().__init__()
        self.urls = urls
        self.seed = seed
        self.epoch = -1

    def __iter__(self) -> Iterator[dict]:
        self.epoch += 1
        mine = list(wds.split_by_worker(self.urls))
        for repeat in itertools.count():
            order = list(mine)
            random.Random(f"{self.seed}-{self.epoch}-{repeat}").shuffle(order)
            yield from ({"url": url} for url in order)


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int, num_workers: int) -> int:
    """Batches each rank runs per epoch: ceil(samples / global batch), rounded up to a multiple of workers."""
    batches = max(1, math.ceil(num_samples / (batch_size * world_size)))
    workers = max(1, num_workers)
    return math.ceil(batches / workers) * workers


def shard_source(
    urls: list[str], *, sampling: str, rank: int, world_size: int, num_workers: int, seed: int, key: str
) -> list:
    """Pipeline stages yielding this worker's shard URLs: disjoint per rank/worker, or resampled."""
    if sampling == "resampled":
        return [wds.ResampledShards(urls, seed=seed, worker_seed=RankWorkerSeed(rank), deterministic=True)]
    if sampling != "disjoint":
        raise ConfigError(f"data.init_args.sampling: {sampling!r} is not one of {SAMPLING_MODES}")
    per_rank = len(urls) // world_size
    if per_rank < max(1, num_workers):
        raise ConfigError(
            f"{key}: {len(urls)} shards cannot be split disjointly over {world_size} rank(s) x "
            f"{max(1, num_workers)} worker(s); add shards, lower data.init_args.num_workers, "
            "or set data.init_args.sampling resampled"
        )
    return [CycledShards(urls[rank::world_size], seed=seed + rank)]


def build_loader(
    urls: list[str],
    *,
    decode: Callable[[dict], dict | None],
    collate: Callable[[list[dict]], dict],
    drops: DropCounter,
    batch_size: int,
    num_batches: int,
    num_workers: int,
    rank: int,
    world_size: int,
    sampling: str,
    seed: int,
    shuffle_buffer: int,
    key: str,
    join: Callable[[dict], dict] | None = None,
    keep: Callable[[dict], dict | None] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over shards yielding exactly ``num_batches`` contract batches on this rank."""
    workers = max(1, num_workers)
    stages = shard_source(
        urls, sampling=sampling, rank=rank, world_size=world_size, num_workers=num_workers, seed=seed, key=key
    )
    stages += [wds.tarfile_to_samples(handler=drops.handler)]
    if keep is not None:
        stages += [wds.map(keep)]
    if join is not None:
        stages += [wds.map(join)]
    if shuffle_buffer > 0:
        stages += [wds.detshuffle(bufsize=shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed + rank)]
    stages += [
        wds.map(decode),
        wds.batched(batch_size, collation_fn=collate, partial=False),
        drops.attach,
    ]
    dataset = wds.DataPipeline(*stages).with_epoch(num_batches // workers).with_length(num_batches, silent=True)
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
