"""Sample-level sieve: embeddings files in, a keep list (JSON) out, for data.init_args.keep_list.

Usage:
    python preprocess/sieve.py --config configs/preprocess/sieve.yaml sieve=semdedup fraction=0.5 \
        embeddings='data/synthetic/train/{00000..00007}.emb.parquet' out=data/keep/semdedup.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.sieves.run import run_sieve  # noqa: E402
from preprocess.vision_pass import run_cli  # noqa: E402


def summary(info: dict) -> str:
    """One line per fact of the keep list written."""
    counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items()) or "none"
    return (f"sieve:   {info['sieve']} {info['params']}\n"
            f"kept:    {info['num_kept']} of {info['num_candidates']} ({info['achieved_fraction']:.4f}, "
            f"target {info['target_fraction']})\ncounts:  {counts}\nkeep list: {info['out']}")


def main(argv: list[str] | None = None) -> int:
    """Merge the YAML config with dotlist overrides, run the sieve and print its summary."""
    return run_cli(__doc__, run_sieve, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
