"""D2 Pruning (Maharana et al. 2024): kNN graph, forward message passing of difficulty, greedy reverse selection."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, OnEmbedding, at_least
from lightning_juicer.sieves.neighbors import check_index, knn
from lightning_juicer.sieves.scored import clip_score


def d2_prune(
    x: np.ndarray, difficulty: np.ndarray, n_keep: int, k: int = 10, gamma_forward: float = 1.0,
    gamma_reverse: float = 1.0, gpu: bool = False, nprobe: int = 8, index: str = "ivf", ef_search: int = 64,
) -> Kept:
    """Keep n_keep rows: s' = s + sum_j exp(-g_f d_ij) s_j, then pick the max s' and lower its neighbours by exp(-g_r d_ij) s'_i.

    d_ij is the Euclidean distance of the unit embeddings; difficulty is clipped at 0 so scores only fall.
    Above ``neighbors.EXACT_KNN_MAX`` rows the kNN graph is approximate: faiss IVF (``nprobe`` lists probed)
    or HNSW (``ef_search``), see ``neighbors.knn``; a neighbour slot the index left empty carries no weight.
    """
    s = np.clip(np.asarray(difficulty, dtype=np.float64), 0.0, None)
    if len(x) < 2:
        return Kept(np.arange(min(len(x), n_keep)), {"knn": 0})
    sims, idx = knn(x, k, gpu=gpu, nprobe=nprobe, index=index, ef_search=ef_search)
    found = idx >= 0
    idx = np.where(found, idx, 0)
    dist = np.sqrt(np.clip(2.0 - 2.0 * sims.astype(np.float64), 0.0, None))
    score = s + (found * np.exp(-gamma_forward * dist) * s[idx]).sum(axis=1)
    weight = found * np.exp(-gamma_reverse * dist)
    heap = [(-v, i) for i, v in enumerate(score)]
    heapq.heapify(heap)
    chosen = np.zeros(len(x), dtype=bool)
    kept: list[int] = []
    while heap and len(kept) < n_keep:
        neg, i = heapq.heappop(heap)
        if chosen[i]:
            continue
        if -neg != score[i]:  # stale entry: the score fell since it was pushed
            heapq.heappush(heap, (-score[i], i))
            continue
        chosen[i] = True
        kept.append(i)
        for j, w in zip(idx[i], weight[i]):
            if not chosen[j]:
                score[j] -= w * score[i]
    return Kept(np.sort(np.asarray(kept, dtype=np.int64)), {"knn": int(idx.shape[1])})


@SIEVES.register("d2")
@dataclass
class D2(OnEmbedding):
    """D2 Pruning on the kNN graph of the embedding, difficulty = 1 - the reference model's CLIP score.

    Args:
        knn: neighbours in the kNN graph
        gamma_forward: forward message weight exp(-gamma_forward * distance)
        gamma_reverse: reverse (down-weighting) message weight
        nprobe: IVF lists searched per row, above neighbors.EXACT_KNN_MAX rows (recall vs time)
        index: the approximate kNN index above neighbors.EXACT_KNN_MAX rows: ivf (deterministic, GPU too) or
            hnsw (CPU; O(n log n), cheaper than ivf from ~1M rows)
        ef_search: HNSW candidate list per row (recall vs time)
    """

    needs = ("image", "text")
    knn: int = 10
    gamma_forward: float = 1.0
    gamma_reverse: float = 1.0
    nprobe: int = 8
    index: Literal["ivf", "hnsw"] = "ivf"
    ef_search: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "knn", "nprobe", "ef_search")
        check_index(self.index, self.gpu, f"{KEY}.init_args.index")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        difficulty = 1.0 - clip_score(candidates.arrays["image"], candidates.release("text"))
        return d2_prune(candidates.arrays[self.embedding], difficulty, n_keep, self.knn, self.gamma_forward,
                        self.gamma_reverse, self.gpu, self.nprobe, self.index, self.ef_search)
