"""Sample-level sieves (DataSieve baselines) over per-shard embeddings, writing keep lists the DataModule reads."""
