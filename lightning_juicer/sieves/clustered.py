"""Sieves built on spherical k-means of the embeddings: Cluster (balanced quotas), SemDeDup and D4."""

from __future__ import annotations

import numpy as np

from lightning_juicer.sieves.base import Kept
from lightning_juicer.sieves.neighbors import Clusters, normalise, spherical_kmeans


def balanced_quotas(sizes: np.ndarray, n_keep: int) -> np.ndarray:
    """Equal quota per cluster, a cluster smaller than its quota keeps all, the unused quota is redistributed."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = np.zeros_like(sizes)
    remaining, left = min(int(n_keep), int(sizes.sum())), int((sizes > 0).sum())
    for c in np.argsort(sizes, kind="stable"):
        if sizes[c] == 0:
            continue
        quota[c] = min(sizes[c], remaining // left)
        remaining -= quota[c]
        left -= 1
    # What integer division left over goes one by one to the largest clusters that still have room.
    for c in np.argsort(-sizes, kind="stable"):
        if remaining == 0:
            break
        if quota[c] < sizes[c]:
            quota[c] += 1
            remaining -= 1
    return quota


def proportional_quotas(sizes: np.ndarray, n_keep: int) -> np.ndarray:
    """Quotas proportional to cluster sizes summing to n_keep (largest-remainder rounding)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    exact = sizes * (n_keep / max(int(sizes.sum()), 1))
    quota = np.minimum(np.floor(exact).astype(np.int64), sizes)
    for c in np.argsort(-(exact - quota), kind="stable")[: max(0, n_keep - int(quota.sum()))]:
        quota[c] += 1
    return np.minimum(quota, sizes)


def _members(clusters: Clusters) -> list[np.ndarray]:
    k = len(clusters.centroids)
    order = np.argsort(clusters.labels, kind="stable")
    bounds = np.searchsorted(clusters.labels[order], np.arange(k + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(k)]


def cluster_sieve(
    x: np.ndarray, n_keep: int, clusters: int, seed: int, niter: int = 20, gpu: bool = False, nredo: int = 1
) -> Kept:
    """Cluster: spherical k-means, equal quota per cluster (unused quota redistributed), random within a cluster."""
    result = spherical_kmeans(x, clusters, seed=seed, niter=niter, gpu=gpu, nredo=nredo)
    members = _members(result)
    sizes = np.array([len(m) for m in members])
    quota = balanced_quotas(sizes, n_keep)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(m, size=q, replace=False) for m, q in zip(members, quota) if q]
    counts = {"clusters": len(members), "empty_clusters": int((sizes == 0).sum())}
    return Kept(np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64), counts)


def max_earlier_similarity(x: np.ndarray, block_elems: int = 1 << 24) -> np.ndarray:
    """M_j = max cosine of row j to any earlier row (-1 for the first), blockwise: no [n, n] matrix."""
    n = len(x)
    out = np.full(n, -1.0, dtype=np.float32)
    rows = max(1, block_elems // max(n, 1))
    for start in range(1, n, rows):
        stop = min(n, start + rows)
        sims = x[start:stop] @ x[:stop].T
        sims[np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]] = -np.inf
        out[start:stop] = sims.max(axis=1)
    return out


def semdedup_scores(clusters: Clusters, x: np.ndarray, block_elems: int = 1 << 24) -> np.ndarray:
    """Per row, M_j within its cluster, members sorted by distance to the centroid (farthest first, kept)."""
    m = np.full(len(x), -1.0, dtype=np.float32)
    for members in _members(clusters):
        if len(members) < 2:
            continue
        ordered = members[np.argsort(clusters.similarity[members], kind="stable")]
        m[ordered] = max_earlier_similarity(x[ordered], block_elems)
    return m


def semdedup(
    x: np.ndarray, n_keep: int, clusters: int, seed: int, eps: float | None = None, niter: int = 20,
    gpu: bool = False, block_elems: int = 1 << 24,
) -> Kept:
    """SemDeDup: remove M_j > 1 - eps, or (eps None) the highest M_j until n_keep remain."""
    x = normalise(x)
    result = spherical_kmeans(x, clusters, seed=seed, niter=niter, gpu=gpu)
    m = semdedup_scores(result, x, block_elems)
    if eps is not None:
        kept = np.flatnonzero(m <= 1.0 - eps)
    else:
        kept = np.sort(np.argsort(m, kind="stable")[:n_keep])
    sizes = np.bincount(result.labels, minlength=len(result.centroids))
    counts = {"clusters": len(sizes), "empty_clusters": int((sizes == 0).sum()), "duplicates_removed": len(x) - len(kept)}
    return Kept(kept, counts)


def d4(
    x: np.ndarray, n_keep: int, clusters: int, seed: int, dedup_fraction: float, recluster: int | None = None,
    niter: int = 20, gpu: bool = False, block_elems: int = 1 << 24,
) -> Kept:
    """D4: SemDeDup to ``dedup_fraction`` of the data, re-cluster, drop the most prototypical per cluster to n_keep."""
    x = normalise(x)
    n_dedup = max(n_keep, min(len(x), round(dedup_fraction * len(x))))
    first = semdedup(x, n_dedup, clusters, seed, None, niter, gpu, block_elems)
    survivors = first.indices
    second = spherical_kmeans(x[survivors], recluster or clusters, seed=seed + 1, niter=niter, gpu=gpu)
    members = _members(second)
    sizes = np.array([len(m) for m in members])
    quota = proportional_quotas(sizes, n_keep)
    # Least prototypical first: the lowest cosine to the cluster's centroid.
    kept = [m[np.argsort(second.similarity[m], kind="stable")[:q]] for m, q in zip(members, quota) if q]
    indices = np.sort(survivors[np.concatenate(kept)]) if kept else np.zeros(0, np.int64)
    counts = {
        "clusters": first.counts["clusters"],
        "empty_clusters": first.counts["empty_clusters"] + int((sizes == 0).sum()),
        "after_semdedup": len(survivors),
        "prototypical_removed": len(survivors) - len(indices),
    }
    return Kept(indices, counts)
