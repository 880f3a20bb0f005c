"""Build the real-photo benchmark (scikit-image's photographs + Fashion-MNIST items), seeded and byte-deterministic.

Usage: python preprocess/make_real_photos.py root=data/real_photos num_train=4000 seed=0 noise.typo=0.3
Keys: lightning_juicer/realphoto/build.py (RealPhotoConfig); layout and design: docs/real_parts_benchmark.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import ConfigError  # noqa: E402
from lightning_juicer.realphoto import RealPhotoConfig, build_real_photos, is_built  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Build a RealPhotoConfig from key=value arguments and write the benchmark; prints its paths."""
    try:
        overrides = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
        cfg: RealPhotoConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RealPhotoConfig), overrides))
        existed = is_built(cfg.root)
        start = time.perf_counter()
        paths = build_real_photos(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - omegaconf's key/type errors, shown in one line
        if type(e).__module__.startswith("omegaconf"):
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    print(f"{paths.root}: " + ("already built" if existed else f"built in {time.perf_counter() - start:.1f} s"))
    for name in ("train_shards", "val_shards", "zeroshot_dir", "classnames_file", "templates_file",
                 "retrieval_images", "retrieval_json", "head_train", "head_val"):
        print(f"{name + ':':<18}{getattr(paths, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
