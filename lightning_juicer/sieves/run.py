"""Running a sieve: candidates in (embeddings files, or the shard list for a sieve that needs no embeddings),
a keep list out. ``run_sieve`` is the programmatic API; ``sieves/command.py`` is the command line.

Settings (``SieveRun``) are parsed by one jsonargparse parser for both: the sieve is a registered short
name (``random``, ``semdedup``, ...) or a ``class_path`` / ``init_args`` of any ``Sieve`` subclass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jsonargparse import ActionConfigFile, get_loader, set_loader

from lightning_juicer.errors import ConfigError, find_config_error
from lightning_juicer.io.keeplist import check_fraction, write_keep_list
from lightning_juicer.outputs import check_writable
from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, Sieve
from lightning_juicer.sieves.neighbors import normalise, normalise_
from lightning_juicer.sieves.samples import degenerate, read_samples
from lightning_juicer.usage import OneLineArgumentParser

log = logging.getLogger(__name__)

PARSER_MODE = "juicer_sieve"  # YAML, with the sieve's short name resolved (see ``resolve_short_names``)


@dataclass
class SieveRun:
    """What a sieve run reads (``configs/preprocess/sieve.yaml`` and the command line).

    Args:
        sieve: the sieve: random | clip_score | cluster | semdedup | d4 | neg_clip_loss | norm_sim | d2
            (its parameters: sieve.init_args.<name>), or the class_path of any Sieve subclass
        out: the keep list (JSON) to write
        embeddings: the embeddings pass's files: brace pattern, 'a::b' joins, or a list
        shards: the tar shards themselves, for a sieve that needs no embeddings (random); instead of embeddings
        fraction: target keep fraction, in (0, 1]
        seed: seed of every random choice (sampling, k-means initialisation, negCLIPLoss batches)
    """

    sieve: Sieve | None = None
    out: str | None = None
    embeddings: str | list[str] | None = None
    shards: str | list[str] | None = None
    fraction: float = 0.5
    seed: int = 0


def _class_path(name: str) -> str:
    cls = SIEVES.get(name)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_short_names(value: Any) -> Any:
    """A sieve given by registered short name (``"semdedup"`` or ``class_path: semdedup``) -> its class path."""
    if isinstance(value, str) and value in SIEVES:
        return {"class_path": _class_path(value)}
    if isinstance(value, Mapping) and isinstance(value.get("class_path"), str) and value["class_path"] in SIEVES:
        return {**value, "class_path": _class_path(value["class_path"])}
    if isinstance(value, str) and "." not in value and not value.lstrip().startswith("{") and value not in {
            SIEVES.get(n).__name__ for n in SIEVES}:
        SIEVES.get(value)  # a one-line ConfigError naming the key and the choices
    return value


def _load_config(text: str) -> Any:
    """The YAML loader of the sieve parser: a config whose ``sieve`` is a short name gets its class path."""
    value = get_loader("yaml")(text)
    if isinstance(value, dict) and value.get(KEY) is not None:
        value = {**value, KEY: resolve_short_names(value[KEY])}
    return value


set_loader(PARSER_MODE, _load_config, (yaml.YAMLError,))


def settings_parser(prog: str = "python -m lightning_juicer sieve") -> OneLineArgumentParser:
    """``--config``, ``--print_config`` and the fields of ``SieveRun`` (the sieve's parameters nested under it)."""
    parser = OneLineArgumentParser(prog=prog, description=__doc__, parser_mode=PARSER_MODE)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (repeatable; later wins)")
    parser.add_class_arguments(SieveRun, fail_untyped=True, sub_configs=True)
    return parser


def to_settings(cfg: SieveRun | Mapping[str, Any], parser: OneLineArgumentParser | None = None,
                argv: list[str] | None = None) -> SieveRun:
    """A checked SieveRun from itself, a mapping (as a config file would hold it) or a command line."""
    if not isinstance(cfg, SieveRun):
        parser = parser or settings_parser()
        if argv is not None:
            parsed = parser.parse_args(argv)
        else:
            parsed = parser.parse_object({**cfg, KEY: resolve_short_names(cfg.get(KEY))} if KEY in cfg else cfg)
        try:
            init = parser.instantiate(parsed)
        except Exception as exn:  # jsonargparse wraps a sieve's own ConfigError (raised in __post_init__)
            found = find_config_error(exn)
            if found is None:
                raise
            raise found from None
        cfg = SieveRun(**{f.name: init.get(f.name) for f in fields(SieveRun)})
    if cfg.sieve is None:
        raise ConfigError(f"{KEY}: not set; choose from {', '.join(SIEVES)}, e.g. --sieve semdedup")
    if not cfg.out:
        raise ConfigError("out: not set; give the keep list to write, e.g. --out data/keep/semdedup.json")
    check_fraction(cfg.fraction, "fraction")
    return cfg


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
