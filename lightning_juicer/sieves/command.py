"""The sieve command: embeddings files (or, for Random, the shards) in, a keep list out.

    python -m lightning_juicer sieve --config configs/preprocess/sieve.yaml --sieve semdedup \\
        --sieve.init_args.clusters 50 --fraction 0.5 \\
        --embeddings 'data/synthetic/train/{00000..00007}.emb.parquet' --out data/keep/semdedup.json
    python -m lightning_juicer sieve --sieve random --shards 'data/train/{00000..00007}.tar' --out keep.json
    python -m lightning_juicer sieve --config configs/preprocess/sieve.yaml --sieve d4 --print_config
    python -m lightning_juicer sieve --sieve.help semdedup     # a sieve's parameters
"""

from __future__ import annotations

from typing import Any

from lightning_juicer.sieves.run import run_sieve
from lightning_juicer.sieves.settings import settings_parser, to_settings


def summary(info: dict) -> str:
    """One line per fact of the keep list written."""
    counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items()) or "none"
    return (f"sieve:   {info['sieve']} {info['params']}\n"
            f"kept:    {info['num_kept']} of {info['num_candidates']} ({info['achieved_fraction']:.4f}, "
            f"target {info['target_fraction']})\ncounts:  {counts}\nkeep list: {info['out']}")


def main(argv: list[str]) -> dict[str, Any]:
    """Parse the command line (``--config``, ``--print_config``), run the sieve, print and return its summary."""
    parser = settings_parser(description=__doc__)
    info = run_sieve(to_settings({}, parser, argv))
    print(summary(info))
    return info
