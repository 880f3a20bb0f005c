"""Output folders checked up front: created and probed with a real file, so a pass fails before it computes.

A permission bit says little (root writes into a mode-555 folder; a read-only mount or a path under
a regular file refuses everyone), so the check creates the folder and a probe file in it and deletes
the probe: what fails is reported as one line naming the config key to change.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lightning_juicer.errors import ConfigError


def check_writable(folder: str | Path, key: str) -> Path:
    """Create ``folder`` (and parents) if needed and write / delete a probe file in it; ConfigError if that fails."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a folder; point {key} at a writable folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".juicer-write-probe-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as exn:
        reason = exn.strerror or type(exn).__name__
        raise ConfigError(f"{key}: cannot write into {path} ({reason}); point {key} at a writable folder") from exn
    return path


def check_writable_parents(files: Iterable[str | Path], key: str) -> None:
    """:func:`check_writable` on the distinct folders of ``files`` (e.g. one pass's output files)."""
    for folder in dict.fromkeys(Path(f).parent for f in files):
        check_writable(folder, key)
