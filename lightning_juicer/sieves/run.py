"""Running a sieve: embeddings files in, a keep list out (``preprocess/sieve.py`` is the command line)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf

from lightning_juicer.io.shards import expand_shards
from lightning_juicer.errors import ConfigError
from lightning_juicer.outputs import check_writable
from lightning_juicer.sieves.clustered import Kept, cluster_sieve, d4, semdedup
from lightning_juicer.sieves.d2 import d2_prune
from lightning_juicer.io.embeddings import EmbeddingSet, read_embeddings
from lightning_juicer.io.keeplist import check_fraction, write_keep_list
from lightning_juicer.sieves.scored import clip_score, neg_clip_loss, norm_sim, random_keep, top

log = logging.getLogger(__name__)

# Each sieve's parameters (recorded in the keep list) and the embedding fields it needs.
SIEVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "random": (("seed",), ()),
    "clip_score": ((), ("image", "text")),
    "cluster": (("embedding", "clusters", "niter", "nredo", "seed"), ("@embedding",)),
    "semdedup": (("embedding", "clusters", "niter", "seed", "eps", "block_elems"), ("@embedding",)),
    "d4": (("embedding", "clusters", "recluster", "niter", "seed", "dedup_fraction", "block_elems"), ("@embedding",)),
    "neg_clip_loss": (("batch_size", "repeats", "temperature", "seed"), ("image", "text")),
    "norm_sim": (("p", "target"), ("image",)),
    "d2": (("embedding", "knn", "gamma_forward", "gamma_reverse"), ("@embedding", "image", "text")),
}


@dataclass
class SieveConfig:
    """Everything a sieve reads from ``configs/preprocess/sieve.yaml`` and the command line."""

    sieve: str = MISSING
    embeddings: Any = MISSING
    out: str = MISSING
    fraction: float = 0.5
    seed: int = 0
    embedding: str = "image"
    gpu: bool = False
    clusters: int = 100
    recluster: int | None = None
    niter: int = 20
    nredo: int = 1
    eps: float | None = None
    dedup_fraction: float = 0.75
    block_elems: int = 1 << 24
    batch_size: int = 32768
    repeats: int = 10
    temperature: float | None = None
    target: Any = None
    p: str = "2"
    knn: int = 10
    gamma_forward: float = 1.0
    gamma_reverse: float = 1.0


def to_config(cfg: SieveConfig | DictConfig | Mapping[str, Any]) -> SieveConfig:
    """A validated SieveConfig from a dataclass, an omegaconf config or a plain mapping."""
    merged = OmegaConf.merge(OmegaConf.structured(SieveConfig), cfg)
    for name in ("sieve", "embeddings", "out"):
        if OmegaConf.is_missing(merged, name):
            raise ConfigError(f"{name}: not set; e.g. sieve=semdedup embeddings='data/train/{{00000..00007}}.emb.parquet' out=keep.json")
    out: SieveConfig = OmegaConf.to_object(merged)
    if out.sieve not in SIEVES:
        raise ConfigError(f"sieve: {out.sieve!r} is not one of {tuple(SIEVES)}")
    check_fraction(out.fraction, "fraction")
    if out.sieve == "d4":
        check_fraction(out.dedup_fraction, "dedup_fraction")
    if out.embedding not in ("image", "cls"):
        raise ConfigError(f"embedding: {out.embedding!r} is not one of ('image', 'cls')")
    if out.eps is not None and not 0.0 <= out.eps < 2.0:
        raise ConfigError(f"eps: {out.eps} is outside [0, 2)")
    if str(out.p) not in ("2", "inf"):
        raise ConfigError(f"p: {out.p!r} is not one of ('2', 'inf')")
    if out.sieve == "norm_sim" and not out.target:
        raise ConfigError("target: norm_sim needs the embeddings files of a target set (run the embeddings pass on it)")
    for name in ("clusters", "niter", "nredo", "batch_size", "repeats", "knn", "block_elems"):
        if getattr(out, name) < 1:
            raise ConfigError(f"{name}: {getattr(out, name)} must be >= 1")
    return out


def _fields(cfg: SieveConfig) -> tuple[str, ...]:
    return tuple(dict.fromkeys(cfg.embedding if f == "@embedding" else f for f in SIEVES[cfg.sieve][1]))


def degenerate(emb: EmbeddingSet, fields: tuple[str, ...]) -> np.ndarray:
    """Rows whose embedding in any of ``fields`` is all zeros or not finite."""
    bad = np.zeros(len(emb), dtype=bool)
    for name in fields:
        if name not in emb.arrays:
            raise ConfigError(f"embeddings: the files hold no {name!r} embeddings; rerun the embeddings pass "
                              f"with {'governor.name' if name == 'cls' else 'reference.name'} set")
        values = emb.arrays[name]
        bad |= ~np.isfinite(values).all(axis=1) | (np.abs(np.nan_to_num(values)).sum(axis=1) == 0)
    return bad


def select(cfg: SieveConfig, emb: EmbeddingSet, rows: np.ndarray, n_keep: int) -> Kept:
    """Run the configured sieve on the candidate rows; indices are positions in ``rows``."""
    arrays = {name: values[rows] for name, values in emb.arrays.items()}
    x = arrays.get(cfg.embedding)
    name = cfg.sieve
    if name == "random":
        return Kept(random_keep(len(rows), n_keep, cfg.seed), {})
    if name == "clip_score":
        return Kept(top(clip_score(arrays["image"], arrays["text"]), n_keep), {})
    if name == "cluster":
        return cluster_sieve(x, n_keep, cfg.clusters, cfg.seed, cfg.niter, cfg.gpu, cfg.nredo)
    if name == "semdedup":
        return semdedup(x, n_keep, cfg.clusters, cfg.seed, cfg.eps, cfg.niter, cfg.gpu, cfg.block_elems)
    if name == "d4":
        return d4(x, n_keep, cfg.clusters, cfg.seed, cfg.dedup_fraction, cfg.recluster, cfg.niter, cfg.gpu,
                  cfg.block_elems)
    if name == "neg_clip_loss":
        temperature = cfg.temperature or emb.temperature
        if not temperature:
            raise ConfigError("temperature: the embeddings carry no reference temperature; set temperature")
        scores = neg_clip_loss(arrays["image"], arrays["text"], temperature, cfg.batch_size, cfg.repeats, cfg.seed)
        return Kept(top(scores, n_keep), {})
    if name == "norm_sim":
        target = read_embeddings(expand_shards(cfg.target, "target"))
        if "image" not in target.arrays:
            raise ConfigError("target: the target embeddings hold no image embeddings")
        return Kept(top(norm_sim(arrays["image"], target.arrays["image"], float(cfg.p)), n_keep), {})
    difficulty = 1.0 - clip_score(arrays["image"], arrays["text"])
    return d2_prune(x, difficulty, n_keep, cfg.knn, cfg.gamma_forward, cfg.gamma_reverse, cfg.gpu)


def run_sieve(cfg: SieveConfig | DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Read the embeddings, run the sieve, write the keep list; returns its manifest (without keys)."""
    cfg = to_config(cfg)
    check_writable(Path(cfg.out).parent, "out")
    emb = read_embeddings(expand_shards(cfg.embeddings, "embeddings"))
    fields = _fields(cfg)
    bad = degenerate(emb, fields)
    rows = np.flatnonzero(~bad)
    n_keep = min(len(rows), max(1, round(cfg.fraction * len(emb)))) if len(emb) else 0
    if bad.any():
        log.warning("sieve %s: %d sample(s) with a degenerate (zero or non-finite) embedding are not kept",
                    cfg.sieve, int(bad.sum()))
    kept = select(cfg, emb, rows, n_keep) if n_keep else Kept(np.zeros(0, np.int64), {})
    chosen = rows[kept.indices]
    params = {name: getattr(cfg, name) for name in SIEVES[cfg.sieve][0]}
    counts = {"degenerate_embedding": int(bad.sum()), **kept.counts}
    info = write_keep_list(cfg.out, cfg.sieve, params, ((emb.shards[i], emb.keys[i]) for i in chosen), len(emb),
                           cfg.fraction, counts, emb.files)
    log.info("sieve %s kept %d of %d (%.3f, target %.3f) -> %s", cfg.sieve, info["num_kept"], len(emb),
             info["achieved_fraction"], cfg.fraction, cfg.out)
    return {**info, "out": cfg.out}
