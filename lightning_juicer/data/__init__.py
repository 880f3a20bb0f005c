"""Data: shard reading, batch decoding and the DataModule (the synthetic generator: ``lightning_juicer.synthetic``).

The names below are imported on first use, so that light modules of this package (``writers``,
``shards``) can be used without importing Lightning.
"""

from __future__ import annotations

import importlib

__all__ = ["DataSpec", "JuicerDataModule", "SyntheticConfig"]
_HOME = {
    "DataSpec": "lightning_juicer.data.spec",
    "JuicerDataModule": "lightning_juicer.data.datamodule",
    "SyntheticConfig": "lightning_juicer.synthetic",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
