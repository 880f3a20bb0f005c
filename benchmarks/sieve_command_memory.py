"""Peak memory of the whole sieve command, as a user runs it, on N rows of embeddings files.

    python benchmarks/sieve_command_memory.py --rows 1000000 --sieve d4 --clusters 500

Writes ``--files`` embeddings files in the embeddings pass's format (``io.embeddings.write_embeddings``:
float16 ``image`` and ``text`` [512] and ``cls`` [384], random unit rows, keys unique per file), then
runs ``python -m lightning_juicer sieve`` on them in a child process and reads the child's peak RSS
(``getrusage(RUSAGE_CHILDREN)``): the reader, the sieve and the keep-list writer together, imports
included. Prints rows, files, the command, wall and CPU seconds, peak RSS and the rows kept.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_juicer.io.embeddings import write_embeddings  # noqa: E402

DIMS = {"image": 512, "text": 512, "cls": 384}


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_files(folder: Path, rows: int, files: int, seed: int) -> list[str]:
    """``files`` embeddings files holding ``rows`` rows in all."""
    rng, paths = np.random.default_rng(seed), []
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        keys = [f"{i:05d}_{j:07d}" for j in range(n)]
        arrays = {name: unit(rng, n, dim) for name, dim in DIMS.items()}
        meta = {"format_version": 1, "shard": f"{i:05d}.tar", "shard_url": f"/data/{i:05d}.tar", "temperature": 0.01}
        paths.append(str(write_embeddings(folder / f"{i:05d}.emb.parquet", keys, arrays, meta)))
        del arrays
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--sieve", default="d4")
    parser.add_argument("--clusters", type=int, default=500, help="sieve.init_args.clusters (cluster, semdedup, d4)")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="sieve_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    marker = folder / f"rows{args.rows}_files{args.files}.done"  # files of an earlier run with these sizes are reused
    paths = sorted(str(p) for p in folder.glob("*.emb.parquet")) if marker.is_file() else write_files(folder, args.rows, args.files, seed=0)
    marker.touch()
    print(f"{args.rows:,} rows in {len(paths)} files ({sum(os.path.getsize(p) for p in paths) / 2**20:,.0f} MB) "
          f"written in {time.perf_counter() - start:.0f} s", flush=True)
    command = [sys.executable, "-m", "lightning_juicer", "sieve", "--config", "configs/preprocess/sieve.yaml",
               "--sieve", args.sieve, "--fraction", str(args.fraction), "--embeddings", json.dumps(paths),
               "--out", str(folder / "keep.json")]
    if args.sieve in ("cluster", "semdedup", "d4"):
        command += ["--sieve.init_args.clusters", str(args.clusters)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"sieve command failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    kept = json.loads((folder / "keep.json").read_text())
    result = {"rows": args.rows, "files": len(paths), "sieve": args.sieve, "fraction": args.fraction,
              "clusters": args.clusters if args.sieve in ("cluster", "semdedup", "d4") else None,
              "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024), "kept": kept.get("kept", kept.get("num_kept")),
              "command": " ".join(command[1:4] + ["..."])}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
