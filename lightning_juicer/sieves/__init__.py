"""Sample-level sieves (DataSieve baselines) over per-shard embeddings, writing keep lists the DataModule reads."""

from lightning_juicer.sieves.keeplist import KeepList, read_keep_list, write_keep_list

__all__ = ["KeepList", "read_keep_list", "write_keep_list"]
