"""Generate the synthetic image-caption dataset (``lightning_juicer.synthetic``).

Usage: python preprocess/make_synthetic.py --root data/synthetic --num_train 2000 --seed 0
Every field of ``SyntheticConfig`` (lightning_juicer/synthetic/build.py) is a flag; ``--config file.yaml``
and ``--print_config`` work as in every jsonargparse command.
"""

from __future__ import annotations

import time

from jsonargparse import CLI

from lightning_juicer.usage import OneLineArgumentParser
from lightning_juicer.errors import exit_on_user_error
from lightning_juicer.synthetic import SyntheticConfig, is_generated, prepare_synthetic


def main(argv: list[str] | None = None) -> None:
    """Parse a SyntheticConfig from the flags and generate the dataset; prints its paths."""
    cfg = CLI(SyntheticConfig, args=argv, as_positional=False, description=__doc__,
              parser_class=OneLineArgumentParser, parser_mode="omegaconf")
    existed = is_generated(cfg.root)
    start = time.perf_counter()
    paths = prepare_synthetic(cfg)
    action = "already generated" if existed else f"generated in {time.perf_counter() - start:.1f}s"
    print(f"{paths.root}: {action}")
    for name in ("train_shards", "val_shards", "zeroshot_dir", "classnames_file", "retrieval_images",
                 "retrieval_json"):
        print(f"{name + ':':<18}{getattr(paths, name)}")


if __name__ == "__main__":
    exit_on_user_error(main)
