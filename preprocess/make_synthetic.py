"""Generate the synthetic image-caption dataset.

Usage: python preprocess/make_synthetic.py root=data/synthetic num_train=2000 seed=0
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.synthetic import SyntheticConfig, is_generated, prepare_synthetic  # noqa: E402
from lightning_juicer.errors import check_dotlist, exit_on_user_error  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Build a SyntheticConfig from dotlist arguments and generate the dataset."""
    schema = OmegaConf.structured(SyntheticConfig)
    overrides = OmegaConf.from_dotlist(check_dotlist(sys.argv[1:] if argv is None else argv))
    cfg: SyntheticConfig = OmegaConf.to_object(OmegaConf.merge(schema, overrides))
    existed = is_generated(cfg.root)
    start = time.perf_counter()
    paths = prepare_synthetic(cfg)
    action = "already generated" if existed else f"generated in {time.perf_counter() - start:.1f}s"
    print(f"{paths.root}: {action}")
    print(f"train_shards:     {paths.train_shards}")
    print(f"val_shards:       {paths.val_shards}")
    print(f"zeroshot_dir:     {paths.zeroshot_dir}")
    print(f"classnames_file:  {paths.classnames_file}")
    print(f"retrieval_images: {paths.retrieval_images}")
    print(f"retrieval_json:   {paths.retrieval_json}")


if __name__ == "__main__":
    exit_on_user_error(main)
