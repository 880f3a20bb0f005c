"""Sample-level sieves (DataSieve baselines) over per-shard embeddings, writing keep lists the DataModule reads.

Layer 6 (imports core, io/ and governor-free helpers only). One file per sieve, each a dataclass registered
in ``SIEVES`` (``sieves/base.py``); the shared algorithms live in ``neighbors.py`` (faiss k-means, kNN),
``clustered.py`` (cluster quotas, SemDeDup's blocked similarity, D4) and ``scored.py`` (scores, top-k).
Importing this package registers the built-in sieves; ``sieves/command.py`` is the ``sieve`` command.
"""

from lightning_juicer.sieves.base import SIEVES, Candidates, Kept, Sieve
from lightning_juicer.sieves import (  # noqa: F401  (each module registers its sieve)
    clip_score,
    cluster,
    d2,
    d4,
    neg_clip_loss,
    norm_sim,
    random,
    semdedup,
)

__all__ = ["SIEVES", "Candidates", "Kept", "Sieve"]
