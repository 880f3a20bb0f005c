"""The one exception type for bad user input: its message is a single line naming the key to fix."""

import re


class ConfigError(ValueError):
    """Bad configuration or input, reported to the user as one line (no traceback)."""


def rekeyed(error: ConfigError, prefix: str, full: str) -> ConfigError:
    """The same error with the config keys under ``prefix`` named by their full path (``governor.`` ->
    ``data.init_args.governor.``), for errors raised by code that knows only its own part of the config."""
    return ConfigError(re.sub(rf"(?<![\w.]){re.escape(prefix)}", full, str(error)))
