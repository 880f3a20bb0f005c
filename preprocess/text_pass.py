"""Text pass: juiced captions (repaired, with the vision pass's class evidence) written into the sidecars.

Usage (after preprocess/vision_pass.py):
    python preprocess/text_pass.py --config configs/preprocess/text.yaml \
        shards='data/synthetic/train/{00000..00007}.tar' backend.name=rules
    python preprocess/text_pass.py --config configs/preprocess/text.yaml \
        shards='/data/cc3m/{00000..00331}.tar' backend.transformers.model=/models/Qwen2.5-1.5B-Instruct devices=8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_juicer.text.text_pass import run_text_pass  # noqa: E402
from preprocess.vision_pass import run_cli  # noqa: E402


def summary(manifest: dict) -> str:
    """Human-readable summary of a merged text-pass manifest."""
    totals, run = manifest["totals"], manifest["run"]
    fallback = ", ".join(f"{k}={v}" for k, v in totals["fallback"].items()) or "none"
    skipped = ", ".join(f"{k}={v}" for k, v in totals["skipped"].items()) or "none"
    speed = f"{run['captions_per_second']:.1f} captions/s" if run["captions_per_second"] else "n/a"
    lines = [
        f"shards:   {totals['shards']} ({totals['shards_written']} written, {totals['shards_existing']} already done, "
        f"{totals['shards_failed']} failed)",
        f"captions: {totals['samples_in']} in, {totals['rewritten']} rewritten, {totals['unchanged']} unchanged, "
        f"fallback to the original: {fallback}; skipped: {skipped}",
        f"speed:    {run['samples_scored']} captions sent to {manifest['backend']} in {run['seconds']:.1f} s "
        f"on {run['ranks']} rank(s): {speed}",
    ]
    failed = [s for s in manifest["shards"] if s["status"] == "failed"]
    lines += [f"FAILED:   {s['shard']}: {s.get('error')}" for s in failed[:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Merge the YAML config with dotlist overrides, run the pass and print its summary."""
    return run_cli(__doc__, run_text_pass, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
