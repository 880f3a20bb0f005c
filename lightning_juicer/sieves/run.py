"""Running a sieve: candidates in (embeddings files, or the shard list for a sieve that needs no embeddings),
a keep list out. ``run_sieve`` is the programmatic API; ``sieves/command.py`` is the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_juicer.io.keeplist import write_keep_list
from lightning_juicer.outputs import check_writable
from lightning_juicer.sieves.base import Candidates, Kept
from lightning_juicer.sieves.neighbors import normalise, normalise_
from lightning_juicer.sieves.samples import degenerate, read_samples
from lightning_juicer.sieves.settings import SieveRun, to_settings

log = logging.getLogger(__name__)


def candidates_of(arrays: dict[str, np.ndarray], rows: np.ndarray, columns: tuple[str, ...],
                  temperature: float | None) -> Candidates:
    """The needed columns at ``rows``, L2-normalised in place; takes the arrays out of ``arrays``.

    When every row is a candidate the arrays themselves are used (no copy); ``arrays`` is emptied so
    that the candidates hold the only reference (a sieve may ``release`` a column it is done with).
    """
    every = len(rows) == len(next(iter(arrays.values()), rows))
    picked = {}
    for name in columns:
        values = arrays[name] if every else arrays[name][rows]
        writable = values.dtype == np.float32 and values.flags.c_contiguous and values.flags.writeable
        picked[name] = normalise_(values) if writable else normalise(values)
    arrays.clear()
    return Candidates(len(rows), picked, temperature)


def run_sieve(cfg: SieveRun | Mapping[str, Any]) -> dict[str, Any]:
    """Read the candidates, run the sieve, write the keep list; returns its manifest (without keys)."""
    cfg = to_settings(cfg)
    sieve = cfg.sieve
    check_writable(Path(cfg.out).parent, "out")
    columns = sieve.columns()
    emb, counts = read_samples(cfg.embeddings, cfg.shards, columns, sieve.name)
    bad = degenerate(emb, columns)
    rows = np.flatnonzero(~bad)
    n_keep = min(len(rows), max(1, round(cfg.fraction * len(emb)))) if len(emb) else 0
    if bad.any():
        log.warning("sieve %s: %d sample(s) with a degenerate (zero or non-finite) embedding are not kept",
                    sieve.name, int(bad.sum()))
    candidates = candidates_of(emb.arrays, rows, columns, emb.temperature)
    kept = sieve.keep(candidates, n_keep, cfg.seed) if n_keep else Kept(np.zeros(0, np.int64), {})
    chosen = rows[kept.indices]
    counts = {"degenerate_embedding": int(bad.sum()), **counts, **kept.counts}
    params = {**sieve.params(), "seed": cfg.seed}
    info = write_keep_list(cfg.out, sieve.name, params, ((emb.shards[i], emb.keys[i]) for i in chosen), len(emb),
                           cfg.fraction, counts, emb.files)
    log.info("sieve %s kept %d of %d (%.3f, target %.3f) -> %s", sieve.name, info["num_kept"], len(emb),
             info["achieved_fraction"], cfg.fraction, cfg.out)
    return {**info, "out": cfg.out}
