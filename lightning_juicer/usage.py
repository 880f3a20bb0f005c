"""Command-line usage errors as one line naming the key, instead of jsonargparse's usage dump.

jsonargparse reports a bad argument by printing the whole usage (60 lines for ``fit``) and a
multi-line message that nests the subclass it tried (``Parser key "model": ... Problem with given
class_path ...: Option 'lrr' is not accepted``). :class:`OneLineParser` raises a
:class:`~lightning_juicer.errors.UsageError` instead, with the message reduced to
``model.init_args.lrr: unknown key (...)`` and a hint to ``--help``; the entry point's error
boundary prints it and exits 2. ``--help`` and ``--print_config`` are untouched.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from lightning_juicer.errors import UsageError, one_line

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_CLASS_PATH = re.compile(r"^- Problem with given class_path '([^']+)':\s*$")
_OPTION = re.compile(r"^Option '([^']+)' is not accepted")
_CLASS_REPR = re.compile(r"<class '(?:builtins\.)?([\w.]+)'>")
_GROUP_OPTION = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'")


def _tidy(text: str) -> str:
    return one_line(_CLASS_REPR.sub(r"\1", text.lstrip("- ")), 300)


def _unrecognized(line: str) -> str:
    args = line.split(":", 1)[1].split()
    keys = [a.lstrip("-").split("=")[0] for a in args if a.startswith("--")]
    if keys:
        return f"{keys[0]}: unknown key ({_tidy(line)})"
    return _tidy(line)


def _is_dataclass(class_path: str) -> bool:
    """Whether ``class_path`` names a dataclass (an optional dataclass field has no ``init_args`` in its config)."""
    module, _, name = class_path.rpartition(".")
    try:
        return dataclasses.is_dataclass(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError):
        return False


def _nested(key: str, lines: list[str]) -> str | None:
    """``<key>.init_args.<arg>: <problem>`` from jsonargparse's report on a subclass's arguments."""
    for i, line in enumerate(lines):
        found = _CLASS_PATH.match(line)
        if not found or i + 1 >= len(lines):
            continue
        inner, after = lines[i + 1], lines[i + 2 :]
        prefix = f"{key}." if _is_dataclass(found.group(1)) else f"{key}.init_args."
        option = _OPTION.match(inner)
        if option:
            return f"{prefix}{option.group(1)}: unknown key ({found.group(1)} has no {option.group(1)!r})"
        parser_key = _PARSER_KEY.match(inner)
        if parser_key:
            detail = parser_key.group(2) or (after[0] if after else "invalid value")
            return f"{prefix}{parser_key.group(1)}: {_tidy(detail)}"
        return f"{key}: {_tidy(inner)} ({found.group(1)})"
    return None


def usage_message(message: str) -> str:
    """jsonargparse's (multi-line) error message as one line that starts with the key to fix."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid command line"
    if lines[0].startswith("unrecognized arguments:"):
        return _unrecognized(lines[0])
    group = _GROUP_OPTION.match(lines[0])
    if group:  # a config file's nested key that its dataclass does not have
        return f"{group.group(1)}.{group.group(2)}: unknown key ({_tidy(lines[0])})"
    head = _PARSER_KEY.match(lines[0])
    if head is None:
        return _tidy(" ".join(lines))
    key, rest = head.group(1), [head.group(2)] if head.group(2) else []
    details = rest + lines[1:]
    nested = _nested(key, details)
    if nested is not None:
        return nested
    useful = [d for d in details if not d.startswith(("Given value", "Subtypes:", "Errors:"))]
    return f"{key}: {_tidy(useful[0] if useful else 'invalid value')}"


def help_hint(prog: str) -> str:
    """``(see python -m lightning_juicer fit --help)`` for a parser's ``prog``."""
    words = [w for w in prog.split() if w != "[options]"]
    if words and words[0] in ("__main__.py", "-m"):
        words[0] = "python -m lightning_juicer"
    return f"(see {' '.join(words + ['--help'])})"


class OneLineErrors:
    """A jsonargparse parser mixin raising a one-line UsageError where jsonargparse would print usage and exit."""

    exit_on_error: bool

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        """Internal parsers (``exit_on_error=False``) keep jsonargparse's behaviour; the user-facing one raises."""
        if not self.exit_on_error:
            super().error(message, ex)
        parser: Any = getattr(ex, "subcommand_parser", None) or self
        raise UsageError(f"{usage_message(message)} {help_hint(parser.prog)}") from None


class OneLineParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser (fit / validate / test / predict) with one-line errors."""


class OneLineArgumentParser(OneLineErrors, ArgumentParser):
    """jsonargparse's parser (the ``export`` command) with one-line errors."""
