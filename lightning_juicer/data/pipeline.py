"""The webdataset stream: shard assignment per rank and worker, epochs of whole passes, batching.

**Epochs.** Every rank runs exactly ``num_batches`` batches per epoch whatever its shard count, so
an uneven shard split cannot leave one rank waiting in a collective. The rank's batches are split
over its DataLoader workers in proportion to their samples (``worker_quotas``; equally when shard
sizes are unknown). A worker's epoch is one *pass*: its shards in a fresh order, read through the
in-worker shuffle buffer, which is drained at the end of the pass, so the pass yields each readable
sample exactly once. The epoch takes the pass's first ``quota`` batches; a worker whose pass is
shorter than its quota continues into a new pass (fresh order) for the rest, and every sample so
repeated is counted (``repeated_in_epoch``). With ``sampling: disjoint`` and shard sizes that allow
it (each worker's samples a multiple of the batch size), an epoch therefore uses every sample
exactly once; otherwise at most once, except the counted top-up. ``sampling: resampled`` draws a
pass of ``len(urls)`` shards with replacement (open_clip's ``--dataset-resampled``): no coverage
guarantee. A pass that yields no usable sample (everything dropped, an empty keep list) raises a
one-line ConfigError instead of spinning.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_juicer.data.drops import DropCounter
from lightning_juicer.io.tars import tar_samples
from lightning_juicer.errors import ConfigError

SAMPLING_MODES = ("disjoint", "resampled")

# Lightning warns that an IterableDataset's __len__ may be wrong with several workers; here the
# workers' quotas sum to exactly num_batches, so the length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int, num_workers: int) -> int:
    """Batches each rank runs per epoch: ceil(samples / global batch), rounded up to a multiple of workers."""
    batches = max(1, math.ceil(num_samples / (batch_size * world_size)))
    workers = max(1, num_workers)
    return math.ceil(batches / workers) * workers


def worker_quotas(num_batches: int, worker_samples: Sequence[int | None]) -> list[int]:
    """Split a rank's batches over its workers in proportion to their samples (largest remainder); equally if unknown."""
    workers = len(worker_samples)
    if any(n is None for n in worker_samples) or not sum(worker_samples):
        return [num_batches // workers + (w < num_batches % workers) for w in range(workers)]
    total = sum(worker_samples)
    exact = [num_batches * n / total for n in worker_samples]
    quotas = [math.floor(x) for x in exact]
    for w in sorted(range(workers), key=lambda w: quotas[w] - exact[w])[: num_batches - sum(quotas)]:
        quotas[w] += 1
    return quotas


def rank_shards(urls: list[str], *, sampling: str, rank: int, world_size: int, num_workers: int, key: str) -> list[str]:
    """The shards this rank reads (``rank::world_size``; all of them when resampled); refuses too few to split."""
    if sampling == "resampled":
        return list(urls)
    if sampling != "disjoint":
        raise ConfigError(f"data.init_args.sampling: {sampling!r} is not one of {SAMPLING_MODES}")
    if len(urls) // world_size < max(1, num_workers):
        raise ConfigError(
            f"{key}: {len(urls)} shards cannot be split disjointly over {world_size} rank(s) x "
            f"{max(1, num_workers)} worker(s); add shards, lower data.init_args.num_workers, "
            "or set data.init_args.sampling resampled"
        )
    return urls[rank::world_size]


class EpochStream(IterableDataset):
    """One rank's training or evaluation stream: per worker, ``quotas[worker]`` batches cut from whole passes.

    ``read(urls, rng)`` turns one pass's shard list into decoded samples (shuffled with ``rng``).
    """

    def __init__(
        self,
        urls: list[str],
        read: Callable[[list[str], random.Random], Iterable[dict]],
        collate: Callable[[list[dict]], dict],
        drops: DropCounter,
        *,
        batch_size: int,
        quotas: list[int],
        sampling: str,
        seed: int,
        key: str,
    ) -> None:
        super().__init__()
        self.urls, self.read, self.collate, self.drops = urls, read, collate, drops
        self.batch_size, self.quotas, self.sampling, self.seed, self.key = batch_size, quotas, sampling, seed, key
        self.epoch = -1

    def __len__(self) -> int:
        return sum(self.quotas)

    def passes(self, worker: int, workers: int) -> Iterator[dict]:
        """This worker's samples, pass after pass; samples of a second pass in the same epoch are counted."""
        mine = self.urls[worker::workers] if self.sampling == "disjoint" else self.urls
        for n in itertools.count():
            rng = random.Random(f"{self.seed}-{worker}-{self.epoch}-{n}")
            order = list(mine)
            if self.sampling == "disjoint":
                rng.shuffle(order)
            else:
                order = rng.choices(mine, k=len(mine))
            produced = 0
            for sample in self.read(order, rng):
                produced += 1
                if n:
                    self.drops.drop("repeated_in_epoch", sample["key"])
                yield sample
            if not produced:
                dropped = ", ".join(f"{r}={c}" for r, c in sorted(self.drops.total.items())) or "none counted"
                raise ConfigError(
                    f"{self.key}: a whole pass over {len(order)} shard(s) ({order[0]}, ...) gave no usable sample "
                    f"(dropped: {dropped}); fix the data or data.init_args.keep_list"
                )

    def __iter__(self) -> Iterator[dict]:
        self.epoch += 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        quota = sum(self.quotas) if info is None else self.quotas[worker]
        samples = self.passes(worker, workers)
        for _ in range(quota):
            batch = self.collate([next(samples) for _ in range(self.batch_size)])
            batch["drops"] = self.drops.take()
            yield batch


class PassReader:
    """One pass's shard list -> decoded samples: tar members, keep list, sidecar join, shuffle buffer, decode."""

    def __init__(
        self,
        decode: Callable[[dict], dict | None],
        drops: DropCounter,
        shuffle_buffer: int,
        keep: Callable[[dict], dict | None] | None = None,
        join: Callable[[dict], dict] | None = None,
    ) -> None:
        self.decode, self.drops, self.shuffle_buffer, self.keep, self.join = decode, drops, shuffle_buffer, keep, join

    def __call__(self, urls: list[str], rng: random.Random) -> Iterable[dict]:
        unkeyed = lambda name, url: self.drops.drop("bad_key", name, f"tar member {name} of {url} has no key")  # noqa: E731
        stages: list = [wds.SimpleShardList(urls), tar_samples(unkeyed, self.drops.handler)]
        stages += [wds.map(stage) for stage in (self.keep, self.join) if stage is not None]
        if self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng))
        stages.append(wds.map(self.decode))
        return wds.DataPipeline(*stages)


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
    sizes: Callable[[str], int | None] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over shards yielding exactly ``num_batches`` contract batches on this rank.

    ``sizes(url)`` (samples per shard, None if unknown) splits the batches over the workers in
    proportion to their shards' samples.
    """
    workers = max(1, num_workers)
    mine = rank_shards(urls, sampling=sampling, rank=rank, world_size=world_size, num_workers=num_workers, key=key)
    if sampling == "disjoint" and sizes is not None:
        counts = [[sizes(u) for u in mine[w::workers]] for w in range(workers)]
        quotas = worker_quotas(num_batches, [None if None in c else sum(c) for c in counts])
    else:
        quotas = worker_quotas(num_batches, [None] * workers)
    dataset = EpochStream(
        mine, PassReader(decode, drops, shuffle_buffer, keep, join), collate, drops, batch_size=batch_size,
        quotas=quotas, sampling=sampling, seed=seed + 1000 * rank, key=key,
    )
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
