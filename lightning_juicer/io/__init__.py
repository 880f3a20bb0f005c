"""On-disk formats and shard I/O, below every other package: shard lists, tar reading, image decoding,
shard writers, the sidecar, keep-list and atomic-write helpers. Imports only ``lightning_juicer.errors``."""
