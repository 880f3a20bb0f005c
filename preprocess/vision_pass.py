"""Precomputed vision pass: governor patch scores and class evidence for every shard, one sidecar per shard.

Usage:
    python preprocess/vision_pass.py --config configs/preprocess/vision.yaml \
        shards='data/synthetic/train/{00000..00007}.tar' governor.name=vit_small_patch16_224.dino devices=8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.errors import EXIT_USER_ERROR, ConfigError, check_dotlist, report_user_error  # noqa: E402
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


def run_cli(doc: str, run: Callable[[Any], dict | None], describe: Callable[[dict], str], argv: list[str] | None) -> int:
    """``--config`` YAML files merged with key=value overrides, passed to ``run``; one-line errors exit 2."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable; later wins)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (omegaconf dotlist)")
    args = parser.parse_args(argv)
    try:
        result = load_and_run(run, args.config, args.overrides)
    except Exception as exn:  # the entry point's error boundary: user errors as one line, bugs with a traceback
        if not report_user_error(exn):
            raise
        return EXIT_USER_ERROR
    if result is None:
        return 0
    print(describe(result))
    if "totals" in result:
        print(f"manifest: {result['manifest']}")
        return 1 if result["totals"]["shards_failed"] else 0
    return 0


def load_and_run(run: Callable[[Any], dict | None], configs: list[str], overrides: list[str]) -> dict | None:
    """The YAML files merged with the overrides, passed to ``run`` (errors are left to the boundary)."""
    missing = [p for p in configs if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--config: {missing[0]} not found")
    cfg = OmegaConf.merge(*(OmegaConf.load(p) for p in configs), OmegaConf.from_dotlist(check_dotlist(overrides)))
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Merge the YAML config with dotlist overrides, run the pass and print its summary."""
    return run_cli(__doc__, run_vision_pass, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
