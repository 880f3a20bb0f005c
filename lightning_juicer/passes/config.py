"""Pass settings and their command line: typed dataclasses read by jsonargparse, like the training CLI.

Every pass's settings subclass :class:`PassSettings` (the run fields all passes share) and add their
own fields; ``python -m lightning_juicer <pass> --config file.yaml --key value --nested.key value``
and ``--print_config`` come from jsonargparse, which checks types and choices and names the key in
a one-line error. The programmatic API (``run_vision_pass({...})``) goes through the same parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from jsonargparse.typing import NonNegativeInt, PositiveInt

from lightning_juicer.errors import ConfigError
from lightning_juicer.usage import OneLineArgumentParser

S = TypeVar("S", bound="PassSettings")
_DOTLIST = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass
class PassSettings:
    """Run settings shared by every shard pass.

    Args:
        shards: brace pattern, 'a::b' joins, or a list of shard paths / URLs.
        manifest: the merged manifest file; null: next to the first output file.
        on_mismatch: an output file written with other models or settings: error | overwrite.
        batch_size: samples per batch (batches never span two shards).
        num_workers: DataLoader workers reading the shards; each takes whole shards.
        accelerator: Lightning accelerator.
        devices: Lightning devices.
        num_nodes: Lightning nodes.
        strategy: Lightning strategy (ddp, ...).
        precision: null: bf16-mixed on CUDA (16-mixed without bf16), 32-true elsewhere.
        progress: a progress bar on a terminal, plain periodic log lines otherwise; false: none.
    """

    shards: str | list[str] | None = None
    manifest: str | None = None
    on_mismatch: Literal["error", "overwrite"] = "error"
    batch_size: PositiveInt = 256
    num_workers: NonNegativeInt = 8
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: PositiveInt = 1
    strategy: str = "auto"
    precision: str | None = None
    progress: bool = True

    def check(self) -> None:
        """Cross-field checks jsonargparse's types cannot express; a ConfigError names the key."""
        if not self.shards:
            raise ConfigError("shards: no shards given; pass --shards '/data/cc3m/{00000..00331}.tar'")


def settings_parser(settings_type: type[PassSettings], prog: str, description: str | None = None) -> ArgumentParser:
    """The command-line / config parser of a pass's settings (``--config``, ``--print_config``, ``--a.b``)."""
    parser = OneLineArgumentParser(prog=prog, description=description or settings_type.__doc__, parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable; later wins)")
    parser.add_class_arguments(settings_type, nested_key=None, fail_untyped=True)
    return parser


def from_namespace(parser: ArgumentParser, settings_type: type[S], namespace: Namespace) -> S:
    """The checked settings object of a parsed namespace."""
    init = parser.instantiate(namespace)
    settings = settings_type(**{f.name: init[f.name] for f in fields(settings_type) if f.name in init})
    settings.check()
    return settings


def to_settings(settings_type: type[S], value: S | Mapping[str, Any], prog: str) -> S:
    """Settings from a settings object (checked as it is) or a mapping (parsed like a YAML config)."""
    if isinstance(value, settings_type):
        value.check()
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prog}: settings must be a {settings_type.__name__} or a mapping, not {type(value).__name__}")
    parser = settings_parser(settings_type, prog)
    return from_namespace(parser, settings_type, parser.parse_object(dict(value)))


def refuse_dotlist(argv: list[str]) -> None:
    """The old ``key=value`` syntax is refused in one line pointing at ``--key value``."""
    for i, arg in enumerate(argv):
        after_option = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        if _DOTLIST.match(arg) and not after_option:
            key, value = arg.split("=", 1)
            raise ConfigError(f"{key}: the passes take --{key} {value} (jsonargparse), not {arg}")


def parse_argv(settings_type: type[S], argv: list[str], prog: str, description: str | None = None) -> S:
    """Settings from a command line (``--help`` / ``--print_config`` print and exit 0)."""
    refuse_dotlist(argv)
    parser = settings_parser(settings_type, prog, description)
    return from_namespace(parser, settings_type, parser.parse_args(argv))
