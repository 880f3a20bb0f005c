"""Build the real-photo benchmark (scikit-image's photographs + Fashion-MNIST items), seeded and byte-deterministic.

Usage: python preprocess/make_real_photos.py --root data/real_photos --num_train 4000 --seed 0 --noise.typo 0.3
Flags: the fields of RealPhotoConfig (lightning_juicer/realphoto/build.py; ``--config file.yaml``,
``--print_config``); layout and design: docs/real_parts_benchmark.md.
"""

from __future__ import annotations

import time

from jsonargparse import CLI

from lightning_juicer.usage import OneLineArgumentParser
from lightning_juicer.errors import exit_on_user_error
from lightning_juicer.realphoto import RealPhotoConfig, build_real_photos, is_built


def main(argv: list[str] | None = None) -> None:
    """Parse a RealPhotoConfig from the flags and write the benchmark; prints its paths."""
    cfg = CLI(RealPhotoConfig, args=argv, as_positional=False, description=__doc__,
              parser_class=OneLineArgumentParser, parser_mode="omegaconf")
    existed = is_built(cfg.root)
    start = time.perf_counter()
    paths = build_real_photos(cfg)
    print(f"{paths.root}: " + ("already built" if existed else f"built in {time.perf_counter() - start:.1f} s"))
    for name in ("train_shards", "val_shards", "zeroshot_dir", "classnames_file", "templates_file",
                 "retrieval_images", "retrieval_json", "head_train", "head_val"):
        print(f"{name + ':':<18}{getattr(paths, name)}")


if __name__ == "__main__":
    exit_on_user_error(main)
