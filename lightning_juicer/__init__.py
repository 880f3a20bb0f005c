"""lightning_juicer: train CLIP-family models on juiced (token-level governed) image-text data.

Layering: a package imports only from packages above it in this list (and from its own), never a
``_private`` name of another package.

 1. ``errors``, ``registry``, ``safe_load``, ``outputs``, ``usage``, ``optim``   core, no package imports but errors
 2. ``io``            on-disk formats and shard I/O: shard lists, tars, decoding, crops, sidecars, keep lists,
                      embeddings files, atomic writes
 3. ``synthetic``, ``realphoto``   the two generated datasets
 4. ``selection``     patch selection strategies (registry: full, random, topk, stratified, mix, topk_context, cluster)
 5. ``governor``      patch scoring (Eq. 2), class evidence (Eq. 4), loading/importing governors, the on-the-fly selector
 6. ``sieves``, ``text``   sample-level sieves (registry); caption engines (registry), prompts, validation
 7. ``data``          the LightningDataModule: webdataset pipeline, samples, batches, the drop ledger
 8. ``models``        the LightningModule (variable-token tower, families registry, the frozen governor it holds)
 9. ``passes``        the shard-pass framework and the vision, text and embeddings passes
10. ``evaluation``, then ``callbacks``, ``visualize``   zero-shot / retrieval evaluation and Lightning callbacks
11. ``resume``, ``compare``, ``cli``   entry points (``python -m lightning_juicer <command>``; ``compare`` runs
                      the others as subprocesses: the paper's comparison of arms)
"""

__version__ = "0.1.0"
