"""Offline shard passes (layer 9: may import everything below it, nothing above).

``base`` is the framework (``ShardPass``: whole shards per rank, Lightning's predict loop, atomic
per-shard outputs, resume, manifest, progress); ``config`` the settings base and parser
(jsonargparse); ``reader`` the shard reading; ``manifest``, ``progress`` and ``trainer`` (the
predict-only Trainer) their parts. Each pass is
one module subclassing ``ShardPass``: ``vision`` (sidecars), ``embeddings`` (embeddings files).
Run one with ``python -m lightning_juicer <pass> --config configs/preprocess/<pass>.yaml``.
"""
