"""Data: the synthetic generator, shard reading, batch decoding and the DataModule."""

from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.data.spec import DataSpec
from lightning_juicer.data.synthetic import SyntheticConfig

__all__ = ["DataSpec", "JuicerDataModule", "SyntheticConfig"]
