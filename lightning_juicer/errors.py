"""The one exception type for bad user input: its message is a single line naming the key to fix."""


class ConfigError(ValueError):
    """Bad configuration or input, reported to the user as one line (no traceback)."""
