"""On-disk formats and shard I/O, below every other package. Imports only ``lightning_juicer.errors``.

``shards`` (shard lists, ``is_remote``, sample counts), ``tars`` (tar members -> samples, member
extensions), ``decode`` (the one image decoder), ``transforms`` (the one deterministic crop), ``writers``
(byte-reproducible shards, JSON, images, Karpathy entries), ``dataset_dir`` (a generated dataset's
folder), ``atomic`` (the one atomic write, with fsync), ``classnames`` (class-name files), ``sidecar``
and ``keeplist`` (the passes' output formats)."""
