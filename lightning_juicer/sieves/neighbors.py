"""faiss k-means and k-nearest neighbours on L2-normalised embeddings (CPU; ``gpu=True`` uses faiss-gpu)."""

from __future__ import annotations

from typing import NamedTuple

import faiss
import numpy as np

from lightning_juicer.errors import ConfigError


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_gpu(gpu: bool) -> None:
    if gpu and (not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1):
        raise ConfigError("gpu: true needs the faiss-gpu build and a visible GPU; set gpu: false")


class Clusters(NamedTuple):
    """Spherical k-means result: unit centroids [k, d], each row's cluster [n] and cosine to it [n]."""

    centroids: np.ndarray
    labels: np.ndarray
    similarity: np.ndarray


def spherical_kmeans(
    x: np.ndarray, k: int, seed: int = 0, niter: int = 20, gpu: bool = False, nredo: int = 1
) -> Clusters:
    """faiss spherical k-means of unit rows x [n, d] into min(k, n) clusters (best of ``nredo`` inits)."""
    _check_gpu(gpu)
    x = normalise(x)
    k = max(1, min(int(k), len(x)))
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=True, gpu=gpu, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    kmeans.train(x)
    centroids = normalise(kmeans.centroids)
    similarity, labels = _search(centroids, x, 1, gpu)
    return Clusters(centroids, labels[:, 0].astype(np.int64), similarity[:, 0])


def _search(base: np.ndarray, queries: np.ndarray, k: int, gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(base.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    return index.search(queries, k)


def knn(x: np.ndarray, k: int, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities [n, k] and indices [n, k] of each unit row's k nearest other rows."""
    _check_gpu(gpu)
    x = normalise(x)
    k = max(1, min(int(k), len(x) - 1))
    sims, idx = _search(x, x, k + 1, gpu)
    # Drop each row itself (usually column 0, but exact duplicates may come first).
    own = idx == np.arange(len(x))[:, None]
    own[own.sum(1) == 0, -1] = True
    keep = ~own
    return sims[keep].reshape(len(x), k), idx[keep].reshape(len(x), k)
