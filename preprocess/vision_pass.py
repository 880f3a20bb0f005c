"""Precomputed vision pass: governor patch scores and class evidence for every shard, one sidecar per shard.

Usage:
    python preprocess/vision_pass.py --config configs/preprocess/vision.yaml \
        shards='data/synthetic/train/{00000..00007}.tar' governor.name=vit_small_patch16_224.dino devices=8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import ConfigError  # noqa: E402
from lightning_juicer.governor.vision_pass import run_vision_pass  # noqa: E402


def summary(manifest: dict) -> str:
    """Human-readable summary of a merged vision-pass manifest."""
    totals, run = manifest["totals"], manifest["run"]
    skipped = ", ".join(f"{k}={v}" for k, v in totals["skipped"].items()) or "none"
    speed = f"{run['images_per_second']:.1f} images/s" if run["images_per_second"] else "n/a"
    lines = [
        f"shards:  {totals['shards']} ({totals['shards_written']} written, {totals['shards_existing']} already done, "
        f"{totals['shards_failed']} failed)",
        f"samples: {totals['samples_in']} in, {totals['samples_written']} in sidecars, skipped: {skipped}",
        f"speed:   {run['samples_scored']} images scored in {run['seconds']:.1f} s on {run['ranks']} rank(s): {speed}",
    ]
    failed = [s for s in manifest["shards"] if s["status"] == "failed"]
    lines += [f"FAILED:  {s['shard']}: {s.get('error')}" for s in failed[:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None, run: Callable = run_vision_pass, describe: Callable = summary,
         doc: str | None = __doc__) -> int:
    """Merge the YAML config with dotlist overrides, run the pass and print its summary (shared by the passes)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable; later wins)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (omegaconf dotlist)")
    args = parser.parse_args(argv)
    missing = [p for p in args.config if not Path(p).is_file()]
    if missing:
        print(f"error: --config: {missing[0]} not found", file=sys.stderr)
        return 2
    try:
        cfg = OmegaConf.merge(*(OmegaConf.load(p) for p in args.config), OmegaConf.from_dotlist(args.overrides))
        manifest = run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if manifest is None:
        return 0
    print(describe(manifest))
    print(f"manifest: {manifest['manifest']}")
    return 1 if manifest["totals"]["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
