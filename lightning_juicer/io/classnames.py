"""Class-name files: one class name per line, in label order (blank lines ignored on reading)."""

from __future__ import annotations

from pathlib import Path

from lightning_juicer.errors import ConfigError


def write_classnames(path: str | Path, names: list[str]) -> None:
    """Write class names one per line (UTF-8, each line ending in a newline)."""
    Path(path).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


def read_classnames(path: str | Path, key: str = "classnames") -> list[str]:
    """Class names from a text file, one per line (blank lines ignored); ConfigError naming ``key`` when the
    file is missing, unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: classnames file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConfigError(f"{key}: classnames file {path} is empty")
    return names
