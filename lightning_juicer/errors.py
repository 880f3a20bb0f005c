"""Bad user input: the ConfigError type, and the entry points' boundary that prints it as one line and exits 2.

Every command (``python -m lightning_juicer ...``, ``preprocess/*.py``) runs inside
:func:`exit_on_user_error`: a :class:`ConfigError` anywhere in the exception chain (jsonargparse and
Lightning wrap errors raised in ``__init__`` or hooks), a command-line usage error, or an omegaconf
error while resolving a config (a non-numeric value, an unknown or empty key) is printed as a single
``error: <key>: <what to fix>`` line and exits with status 2. Anything else is a bug: its traceback
is shown as usual. ``JUICER_TRACEBACK=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable

EXIT_USER_ERROR = 2



class ConfigError(ValueError):
    """Bad configuration or input, reported to the user as one line (no traceback)."""


class UsageError(ConfigError):
    """A command line that does not parse (unknown key, wrong type, unknown subcommand)."""


def _chain(exn: BaseException | None):
    seen: set[int] = set()
    while exn is not None and id(exn) not in seen:
        seen.add(id(exn))
        yield exn
        exn = exn.__cause__ or exn.__context__


def find_config_error(exn: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an exception (jsonargparse and Lightning wrap errors raised in __init__ or hooks)."""
    return next((e for e in _chain(exn) if isinstance(e, ConfigError)), None)


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its whitespace (newlines included) collapsed, cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def omegaconf_message(exn: BaseException) -> str | None:
    """``<full key>: <problem>`` for an omegaconf error raised while merging a config, else None."""
    try:
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return None
    if not isinstance(exn, OmegaConfBaseException):
        return None
    from omegaconf.errors import ConfigKeyError

    message = str(getattr(exn, "msg", None) or exn).strip().splitlines()
    first = message[0] if message else type(exn).__name__
    key = getattr(exn, "full_key", None)
    if isinstance(exn, ConfigKeyError):
        first = f"unknown key ({first})"
    return f"{key}: {first}" if key else first


def user_error_message(exn: BaseException) -> str | None:
    """The one line to print for a user error, or None when ``exn`` is a bug (show its traceback)."""
    found = find_config_error(exn)
    if found is not None:
        return one_line(str(found))
    for link in _chain(exn):
        message = omegaconf_message(link)
        if message is not None:
            return one_line(message)
    return None


def report_user_error(exn: BaseException) -> bool:
    """Print ``error: <one line>`` on stderr and return True for a user error; False for a bug (re-raise it)."""
    message = user_error_message(exn)
    if message is None or os.environ.get("JUICER_TRACEBACK") == "1":
        return False
    print(f"error: {message}", file=sys.stderr)
    return True


def exit_on_user_error(main: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``main``; a user error becomes ``error: ...`` on stderr and ``SystemExit(2)``, a bug keeps its traceback."""
    try:
        return main(*args, **kwargs)
    except Exception as exn:
        if not report_user_error(exn):
            raise
        raise SystemExit(EXIT_USER_ERROR) from None


def rekeyed(error: ConfigError, prefix: str, full: str) -> ConfigError:
    """The same error with the config keys under ``prefix`` named by their full path (``governor.`` ->
    ``data.init_args.governor.``), for errors raised by code that knows only its own part of the config."""
    return ConfigError(re.sub(rf"(?<![\w.]){re.escape(prefix)}", full, str(error)))
