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


def clip_score(image: np.ndarray, text: np.ndarray, block: int = 65536) -> np.ndarray:
    """Image-text cosine per sample (DataComp's CLIP score), ``block`` rows at a time (no normalised copies)."""
    out = np.empty(len(image), dtype=np.float32)
    for start in range(0, len(image), block):
        stop = start + block
        out[start:stop] = np.einsum("nd,nd->n", normalise(image[start:stop]), normalise(text[start:stop]))
    return out


def neg_clip_loss(
    image: np.ndarray, text: np.ndarray, temperature: float, batch_size: int, repeats: int, seed: int,
    block: int = 4096,
) -> np.ndarray:
    """negCLIPLoss: f_i.g_i - (tau/2)[logsumexp_j(f_i.g_j/tau) + logsumexp_j(f_j.g_i/tau)] over random batches.

    Averaged over ``repeats`` random partitions into batches of ``batch_size`` (the last one smaller).
    Each batch's logits are made ``block`` rows at a time (column log-sum-exps accumulated across the
    blocks), so memory is O(block x batch_size), not a [batch, batch] float64 matrix.
    """
    f, g = normalise(image), normalise(text)
    n, rng = len(f), np.random.default_rng(seed)
    total = np.zeros(n, dtype=np.float64)
    for _ in range(repeats):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            gb = g[idx]
            col_max = np.full(len(idx), -np.inf)
            col_sum = np.zeros(len(idx))
            for b in range(0, len(idx), block):
                rows = idx[b : b + block]
                logits = (f[rows] @ gb.T).astype(np.float64) / temperature
                total[rows] += np.diag(logits[:, b : b + len(rows)]) * temperature - temperature / 2 * logsumexp(logits, 1)
                peak = np.maximum(col_max, logits.max(axis=0))
                col_sum = col_sum * np.exp(col_max - peak) + np.exp(logits - peak).sum(axis=0)
                col_max = peak
            total[idx] -= temperature / 2 * (col_max + np.log(col_sum))
    return total / repeats


def norm_sim(image: np.ndarray, target: np.ndarray, p: float, block: int = 65536) -> np.ndarray:
    """NormSim_p: the p-norm (2 or inf) of each sample's cosines to a target set's image embeddings."""
    f, g = normalise(image), normalise(target)
    out = np.empty(len(f), dtype=np.float64)
    for start in range(0, len(f), block):
        sims = f[start : start + block] @ g.T
        out[start : start + block] = np.abs(sims).max(axis=1) if np.isinf(p) else np.linalg.norm(sims, ord=p, axis=1)
    return out
