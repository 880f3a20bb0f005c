"""A pass's manifest: per-rank JSON lines written as shards finish, merged by rank 0 into one JSON file.

Each rank appends one line per shard to ``<manifest>.rank<r>.jsonl`` (status ``written``,
``existing`` or ``failed``, counts ``in`` / ``written`` / ``skipped`` by reason, plus what the pass
adds) and a closing ``rank_done`` line; at the end rank 0 merges them into ``<manifest>`` (header,
per-shard records, totals, run speed), written atomically, and removes the per-rank files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from lightning_juicer.io.sidecar import atomic_write


def rank_manifest(manifest: Path, rank: int) -> Path:
    """The per-rank manifest lines file of ``manifest``."""
    return manifest.with_name(f"{manifest.name}.rank{rank}.jsonl")


@dataclass
class ManifestTotals:
    """What a pass sums over its shards beyond in / written / skipped: per-shard ``numbers`` (ints) and
    ``counters`` (per-reason dicts) of the shards that did not fail, and the name of its speed figure."""

    numbers: tuple[str, ...] = ()
    counters: tuple[str, ...] = ()
    rate: str = "images_per_second"


class RankLines:
    """This rank's manifest lines, flushed line by line so a killed run leaves what it finished."""

    def __init__(self, manifest: Path, rank: int) -> None:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.file: IO[str] = open(rank_manifest(manifest, rank), "w", encoding="utf-8")

    def record(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps({**record, "rank": self.rank}) + "\n")
        self.file.flush()

    def close(self, seconds: float, scored: int) -> None:
        self.file.write(json.dumps({"rank_done": self.rank, "seconds": seconds, "scored": scored}) + "\n")
        self.file.close()


def _read_lines(manifest: Path, world_size: int) -> tuple[list[dict], dict[int, dict]]:
    shards: dict[int, dict] = {}
    ranks: dict[int, dict] = {}
    for rank in range(world_size):
        path = rank_manifest(manifest, rank)
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "rank_done" in record:
                ranks[record["rank_done"]] = record
            else:
                shards[record["index"]] = record
    return [shards[i] for i in sorted(shards)], ranks


def merge_manifests(manifest: Path, world_size: int, header: dict[str, Any],
                    spec: ManifestTotals | None = None) -> dict[str, Any]:
    """Merge the per-rank JSON lines into one manifest with totals; writes it atomically and returns it."""
    spec = spec or ManifestTotals()
    records, ranks = _read_lines(manifest, world_size)
    skipped: Counter[str] = Counter()
    for record in records:
        skipped.update(record.get("skipped", {}))
    status = Counter(record["status"] for record in records)
    done = [record for record in records if record["status"] != "failed"]
    totals: dict[str, Any] = {
        "shards": len(records),
        "shards_written": status["written"],
        "shards_existing": status["existing"],
        "shards_failed": status["failed"],
        "samples_in": sum(r.get("in", 0) for r in records),
        "samples_written": sum(r.get("written", 0) for r in done),
        "skipped": dict(sorted(skipped.items())),
    }
    for name in spec.numbers:
        totals[name] = sum(record.get(name, 0) for record in done)
    for name in spec.counters:
        summed: Counter[str] = Counter()
        for record in done:
            summed.update(record.get(name, {}))
        totals[name] = dict(sorted(summed.items()))
    seconds = max((r["seconds"] for r in ranks.values()), default=0.0)
    scored = sum(r["scored"] for r in ranks.values())
    run = {
        "ranks": world_size,
        "ranks_reported": sorted(ranks),
        "samples_scored": scored,
        "seconds": round(seconds, 3),
        spec.rate: round(scored / seconds, 2) if seconds > 0 else None,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = {**header, "totals": totals, "run": run, "shards": records}
    atomic_write(manifest, lambda f: f.write(json.dumps(out, indent=1).encode()))
    for rank in range(world_size):
        rank_manifest(manifest, rank).unlink(missing_ok=True)
    return out


def summary(manifest: dict[str, Any], written: str = "written", rate: str = "images_per_second",
            unit: str = "images scored") -> str:
    """Human-readable summary of a merged manifest (what the pass commands print)."""
    totals, run = manifest["totals"], manifest["run"]
    skipped = ", ".join(f"{k}={v}" for k, v in totals["skipped"].items()) or "none"
    speed = f"{run[rate]:.1f} {rate.replace('_per_second', '')}/s" if run.get(rate) else "n/a"
    lines = [
        f"shards:  {totals['shards']} ({totals['shards_written']} written, {totals['shards_existing']} already done, "
        f"{totals['shards_failed']} failed)",
        f"samples: {totals['samples_in']} in, {totals['samples_written']} {written}, skipped: {skipped}",
        f"speed:   {run['samples_scored']} {unit} in {run['seconds']:.1f} s on {run['ranks']} rank(s): {speed}",
    ]
    failed = [s for s in manifest["shards"] if s["status"] == "failed"]
    lines += [f"FAILED:  {s['shard']}: {s.get('error')}" for s in failed[:10]]
    lines.append(f"manifest: {manifest['manifest']}")
    return "\n".join(lines)
