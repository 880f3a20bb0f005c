"""Embeddings pass: reference CLIP image/text embeddings and/or governor CLS embeddings, one file per shard.

Usage:
    python preprocess/embeddings.py --config configs/preprocess/embeddings.yaml \
        shards='data/synthetic/train/{00000..00007}.tar' reference.name=runs/ref/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.sieves.embeddings import run_embeddings_pass  # noqa: E402
from preprocess.vision_pass import run_cli, summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Merge the YAML config with dotlist overrides, run the pass and print its summary."""
    return run_cli(__doc__, run_embeddings_pass, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
