"""Text branch (Ψ_txt): caption repair and visual-evidence enrichment, written into the vision sidecars.

Layer 6: imports core, ``io``, and ``synthetic`` (only ``repairs``, the measurement against the
generator). Prompts (captions fenced as data), the text backends (``backends/``, one file each,
registered in ``BACKENDS``), the rules repair, output validation, caption reading and corpus
vocabulary (``corpus``), measurement helpers. The pass that runs them over shards is
:mod:`lightning_juicer.passes.text`.
"""
