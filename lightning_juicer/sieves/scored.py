"""Sieves that score every sample and keep the top fraction: Random, CLIP-score, negCLIPLoss, NormSim."""

from __future__ import annotations

import numpy as np

from lightning_juicer.sieves.neighbors import normalise


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, shifted by the max for stability."""
    peak = x.max(axis=axis, keepdims=True)
    return (peak + np.log(np.exp(x - peak).sum(axis=axis, keepdims=True))).squeeze(axis)


def top(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Indices of the n_keep highest scores (ties to the lower index), ascending."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:n_keep])


def random_keep(n: int, n_keep: int, seed: int) -> np.ndarray:
    """n_keep of n indices drawn uniformly without replacement (seeded), ascending."""
    return np.sort(np.random.default_rng(seed).choice(n, size=n_keep, replace=False))


def clip_score(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Image-text cosine per sample (DataComp's CLIP score)."""
    return np.einsum("nd,nd->n", normalise(image), normalise(text))


def neg_clip_loss(
    image: np.ndarray, text: np.ndarray, temperature: float, batch_size: int, repeats: int, seed: int
) -> np.ndarray:
    """negCLIPLoss: f_i.g_i - (tau/2)[logsumexp_j(f_i.g_j/tau) + logsumexp_j(f_j.g_i/tau)] over random batches.

    Averaged over ``repeats`` random partitions into batches of ``batch_size`` (the last one smaller).
    """
    f, g = normalise(image), normalise(text)
    n, rng = len(f), np.random.default_rng(seed)
    total = np.zeros(n, dtype=np.float64)
    for _ in range(repeats):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = (f[idx] @ g[idx].T).astype(np.float64) / temperature
            norm = logsumexp(logits, axis=1) + logsumexp(logits, axis=0)
            total[idx] += np.diag(logits) * temperature - temperature / 2 * norm
    return total / repeats


def norm_sim(image: np.ndarray, target: np.ndarray, p: float, block: int = 65536) -> np.ndarray:
    """NormSim_p: the p-norm (2 or inf) of each sample's cosines to a target set's image embeddings."""
    f, g = normalise(image), normalise(target)
    out = np.empty(len(f), dtype=np.float64)
    for start in range(0, len(f), block):
        sims = f[start : start + block] @ g.T
        out[start : start + block] = np.abs(sims).max(axis=1) if np.isinf(p) else np.linalg.norm(sims, ord=p, axis=1)
    return out
