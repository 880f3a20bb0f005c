"""faiss k-means and k-nearest neighbours on L2-normalised embeddings (CPU; ``gpu=True`` uses faiss-gpu).

Scaling: k-means trains on at most ``TRAIN_POINTS_PER_CENTROID`` rows per centroid (faiss's own
subsampling) and assigns every row with one flat search, O(n k d); kNN is exact (flat) up to
``EXACT_KNN_MAX`` rows and approximate above, with one of two faiss indexes (``KNN_INDEXES``):

- ``ivf`` (default): ``nlist`` ~ sqrt(n) lists trained on 64 rows each, ``nprobe`` probed,
  O(n (nlist + nprobe n / nlist) d) = O(n^1.5 d); deterministic; runs on the GPU too;
- ``hnsw``: a graph of ``HNSW_M`` links per row, O(n log n d) to build and search; cheaper than IVF
  from ~1M rows on a CPU (docs/benchmarks.md), CPU only, and its graph depends on the order in which
  threads insert rows, so a keep list can differ slightly between runs with several threads.

Searches run in row chunks, so no [n, n] matrix is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import faiss
import numpy as np

from lightning_juicer.errors import ConfigError


NORM_BLOCK = 65536  # rows per block when normalising (bounds the temporaries to ~128 MB at dim 512)
UNIT_TOLERANCE = 1e-5  # a float32 row whose norm is this close to 1 counts as unit


def _row_norms(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    block = x[start:stop]
    return np.sqrt(np.einsum("nd,nd->n", block, block, dtype=np.float32))


def normalise_(x: np.ndarray) -> np.ndarray:
    """Scale the rows of a float32 C-contiguous array to unit L2 norm in place (zero rows stay zero); returns x."""
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("normalise_ needs a writeable float32 C-contiguous array")
    for start in range(0, len(x), NORM_BLOCK):
        stop = start + NORM_BLOCK
        x[start:stop] /= np.maximum(_row_norms(x, start, stop), 1e-12)[:, None]
    return x


def is_unit(x: np.ndarray) -> bool:
    """Whether every row of a float32 array has norm 1 (within UNIT_TOLERANCE) or 0, checked in row blocks."""
    for start in range(0, len(x), NORM_BLOCK):
        norms = _row_norms(x, start, start + NORM_BLOCK)
        if not np.all((np.abs(norms - 1.0) <= UNIT_TOLERANCE) | (norms == 0)):
            return False
    return True


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows at unit L2 norm (float32, contiguous); zero rows stay zero.

    Unit float32 rows come back as they are (no copy: the sieve runner normalises its inputs once, in
    place, and every algorithm after it calls this again); anything else is copied once and normalised.
    """
    if x.dtype == np.float32 and x.flags.c_contiguous and is_unit(x):
        return x
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    return normalise_(out)


def _check_gpu(gpu: bool) -> None:
    if gpu and (not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1):
        raise ConfigError("gpu: true needs the faiss-gpu build and a visible GPU; set gpu: false")


KNN_INDEXES = ("ivf", "hnsw")
HNSW_M = 32  # graph links per row
HNSW_EF_CONSTRUCTION = 64  # candidate list while building
TRAIN_POINTS_PER_CENTROID = 256  # faiss's default sample for k-means training
EXACT_KNN_MAX = 20_000  # above this many rows knn uses an IVF index (exact is O(n^2 d))
SEARCH_CHUNK = 65536  # query rows per faiss search call


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
                          min_points_per_centroid=1, max_points_per_centroid=TRAIN_POINTS_PER_CENTROID)
    kmeans.train(x)
    centroids = normalise(kmeans.centroids)
    similarity, labels = _search(centroids, x, 1, gpu)
    return Clusters(centroids, labels[:, 0].astype(np.int64), similarity[:, 0])


IVF_TRAIN_POINTS_PER_LIST = 64


def ivf_lists(n: int) -> int:
    """IVF list count for n rows: ~sqrt(n) (list length ~ list count: balances the two search costs), <= n / 39."""
    return max(1, min(round(np.sqrt(n)), n // 39))


def check_index(index: str, gpu: bool, key: str = "index") -> None:
    """A ConfigError naming ``key`` for an unknown kNN index, or HNSW asked for on the GPU."""
    if index not in KNN_INDEXES:
        raise ConfigError(f"{key}: {index!r} is not one of {KNN_INDEXES}")
    if index == "hnsw" and gpu:
        raise ConfigError(f"{key}: hnsw runs on the CPU only (faiss-gpu has no HNSW); set index: ivf or gpu: false")


def _hnsw(base: np.ndarray, ef_search: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = ef_search
    index.add(base)
    return index


def _index(base: np.ndarray, gpu: bool, nlist: int | None = None, nprobe: int = 1, seed: int = 0) -> faiss.Index:
    d = base.shape[1]
    if nlist is None:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        index.train(base)
        index.nprobe = min(nprobe, nlist)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    return index


def _chunked(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), SEARCH_CHUNK):
        stop = min(len(queries), start + SEARCH_CHUNK)
        sims[start:stop], idx[start:stop] = index.search(queries[start:stop], k)
    return sims, idx


def _search(base: np.ndarray, queries: np.ndarray, k: int, gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    return _chunked(_index(base, gpu), queries, k)


def knn(
    x: np.ndarray, k: int, gpu: bool = False, exact_max: int = EXACT_KNN_MAX, nlist: int | None = None,
    nprobe: int = 8, seed: int = 0, index: str = "ivf", ef_search: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities [n, k] and indices [n, k] of each unit row's k nearest other rows.

    Exact (flat index) up to ``exact_max`` rows; above, approximate (a row may miss some true
    neighbours): ``index="ivf"`` with ``nlist`` lists (None: ``ivf_lists(n)``) searching ``nprobe`` of
    them, or ``index="hnsw"`` searching with a candidate list of ``ef_search`` (>= k + 1).
    A row the index finds fewer than k neighbours for gets index -1 and similarity -1 in the missing slots.
    """
    check_index(index, gpu)
    _check_gpu(gpu)
    x = normalise(x)
    k = max(1, min(int(k), len(x) - 1))
    if len(x) > exact_max and index == "hnsw":
        built = _hnsw(x, max(ef_search, k + 1))
    else:
        built = _index(x, gpu, None if len(x) <= exact_max else (nlist or ivf_lists(len(x))), nprobe, seed)
    sims, idx = _chunked(built, x, k + 1)
    sims[idx < 0] = -1.0
    # Drop each row itself (usually column 0, but exact duplicates may come first).
    own = idx == np.arange(len(x))[:, None]
    own[own.sum(1) == 0, -1] = True
    keep = ~own
    return sims[keep].reshape(len(x), k), idx[keep].reshape(len(x), k)
