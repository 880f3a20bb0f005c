"""Settings of a sieve run (``SieveRun``) and the one jsonargparse parser that reads them, for the command line
(``sieves/command.py``), config files and the programmatic ``run_sieve(mapping)``.

The sieve is a registered short name (``--sieve semdedup``, ``sieve: semdedup``, ``class_path: semdedup``)
or the ``class_path`` / ``init_args`` of any ``Sieve`` subclass; jsonargparse resolves class paths and
class names itself, so a short name is turned into its class path before it parses (``short_name_args``
for a command line, the parser's YAML loader for config files, ``resolve_short_names`` for a mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, get_loader, set_loader

from lightning_juicer.errors import ConfigError, find_config_error
from lightning_juicer.io.keeplist import check_fraction
from lightning_juicer.sieves.base import KEY, SIEVES, Sieve
from lightning_juicer.usage import OneLineArgumentParser

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


def short_name_args(argv: list[str]) -> list[str]:
    """``--sieve semdedup`` / ``--sieve=semdedup`` / ``--sieve.class_path`` / ``--sieve.help`` -> the class path."""
    out = list(argv)
    for i, arg in enumerate(out):
        flag, sep, value = arg.partition("=")
        if flag not in (f"--{KEY}", f"--{KEY}.class_path", f"--{KEY}.help"):
            continue
        if sep:
            resolved = resolve_short_names(value)
            out[i] = f"{flag}={resolved['class_path']}" if isinstance(resolved, dict) else arg
        elif i + 1 < len(out):
            resolved = resolve_short_names(out[i + 1])
            out[i + 1] = resolved["class_path"] if isinstance(resolved, dict) else out[i + 1]
    return out


def _load_config(text: str) -> Any:
    """The YAML loader of the sieve parser: a config whose ``sieve`` is a short name gets its class path."""
    value = get_loader("yaml")(text)
    if isinstance(value, dict) and value.get(KEY) is not None:
        value = {**value, KEY: resolve_short_names(value[KEY])}
    return value


set_loader(PARSER_MODE, _load_config, (yaml.YAMLError,))


def settings_parser(prog: str = "python -m lightning_juicer sieve", description: str | None = None
                    ) -> OneLineArgumentParser:
    """``--config``, ``--print_config`` and the fields of ``SieveRun`` (the sieve's parameters nested under it)."""
    parser = OneLineArgumentParser(prog=prog, description=description, parser_mode=PARSER_MODE)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (repeatable; later wins)")
    parser.add_class_arguments(SieveRun, fail_untyped=True, sub_configs=True)
    return parser


def to_settings(cfg: SieveRun | Mapping[str, Any], parser: OneLineArgumentParser | None = None,
                argv: list[str] | None = None) -> SieveRun:
    """A checked SieveRun from itself, a mapping (as a config file would hold it) or a command line."""
    if not isinstance(cfg, SieveRun):
        parser = parser or settings_parser()
        if argv is not None:
            parsed = parser.parse_args(short_name_args(argv))
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
