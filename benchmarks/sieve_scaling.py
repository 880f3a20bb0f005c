"""Scaling of every sieve (lightning_juicer/sieves/) on 100k / 300k / 1M random unit embeddings (dim 512).

Each (sieve, size) runs in its own subprocess (so peak memory is that sieve's), which generates the
embeddings the sieve needs in chunks (float32, unit rows), then times what the sieve runner does: the
candidates normalised in place and the registered sieve's ``keep`` (``SIEVES.build(name, **settings)``). Printed per size: wall time of the sieve, the process's peak RSS (embeddings
included) and the growth over the embeddings alone; then the growth exponent b of a least-squares
fit time ~ N^b per sieve (N log N over 100k-1M reads as b ~ 1.06; N^2 as 2).

    nice python benchmarks/sieve_scaling.py                            # 100k, 300k, 1M
    python benchmarks/sieve_scaling.py --sizes 20000 60000 --sieves d2  # a quick check
    python benchmarks/sieve_scaling.py --recall 1000000                # IVF kNN recall@k vs exact on 1M
    python benchmarks/sieve_scaling.py --recall 1000000 --clusters 1000 # ... on clustered rows (closer to real data)
    python benchmarks/sieve_scaling.py --sieves d2 --knn-index hnsw --clusters 5000  # D2 with HNSW, clustered rows

Settings are those of configs/preprocess/sieve.yaml except where the cost would be N x something
large on a 2-core CPU: ``--cluster-size`` (clusters = N / cluster size, so SemDeDup's pairwise step
stays O(N x cluster size)), ``--batch-size`` / ``--repeats`` of negCLIPLoss (cost O(N x batch x
repeats)), ``--target`` rows of NormSim's target set (cost O(N x target)).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

SIEVES = ("random", "clip_score", "cluster", "semdedup", "d4", "neg_clip_loss", "norm_sim", "d2")
DIM = 512
CHUNK = 65536


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """n random unit rows [n, dim] float32, generated CHUNK rows at a time (no float64 copy of the whole)."""
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def clustered_rows(n: int, seed: int, clusters: int, spread: float, dim: int = DIM) -> np.ndarray:
    """n unit rows around ``clusters`` random unit centres: normalise(centre + spread * random unit direction),
    so a row's cosine to its centre is 1 / sqrt(1 + spread^2) (0.71 at spread 1) and to another row of its
    cluster ~1 / (1 + spread^2): a crude stand-in for embeddings of real data, which are far from uniform."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(clusters, seed + 1, dim)
    out = unit_rows(n, seed + 2, dim)
    for start in range(0, n, CHUNK):
        block = out[start : start + CHUNK]
        block *= spread
        block += centres[rng.integers(0, clusters, len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def cpu_seconds() -> float:
    """CPU time of this process (user + system): robust to other jobs on a shared machine, unlike wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sieve_settings(sieve: str, n: int, args: argparse.Namespace, tmp: str) -> dict:
    """The benchmark's parameters of one sieve (``init_args``), see the module docstring."""
    clustered = {"clusters": max(1, n // args.cluster_size), "niter": args.niter}
    if sieve == "norm_sim":
        from lightning_juicer.io.embeddings import write_embeddings

        target = unit_rows(args.target, 3)
        write_embeddings(f"{tmp}/target.emb.parquet", [str(i) for i in range(len(target))], {"image": target}, {})
        return {"target": f"{tmp}/target.emb.parquet"}
    return {"cluster": clustered, "semdedup": clustered, "d4": clustered,
            "neg_clip_loss": {"batch_size": args.batch_size, "repeats": args.repeats, "temperature": 0.01},
            "d2": {"knn": args.knn, "nprobe": args.nprobe, "index": args.knn_index, "ef_search": args.ef_search}}.get(sieve, {})


def run_one(sieve: str, n: int, args: argparse.Namespace) -> dict:
    """Generate the embeddings, run one sieve as the sieve runner does, return its time and memory (child process).

    The runner's steps are timed: taking the needed columns as candidates, normalised in place
    (``run.candidates_of``), and the registered sieve's ``keep``.
    """
    import tempfile

    from lightning_juicer.sieves import SIEVES
    from lightning_juicer.sieves.run import candidates_of

    with tempfile.TemporaryDirectory() as tmp:
        settings = sieve_settings(sieve, n, args, tmp)
        chosen = SIEVES.build(sieve, **settings)
        columns = chosen.columns()
        rows = (lambda n, seed: clustered_rows(n, seed, args.clusters, args.spread)) if args.clusters else unit_rows
        arrays = {name: rows(n, seed) for seed, name in enumerate(("image", "text"), 1) if name in columns}
        data_mb = rss_mb()
        n_keep = n // 2
        start, cpu_start = time.perf_counter(), cpu_seconds()
        kept = chosen.keep(candidates_of(arrays, np.arange(n), columns, None), n_keep, 0).indices
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    assert len(kept) == n_keep, (sieve, len(kept), n_keep)
    return {"sieve": sieve, "n": n, "seconds": seconds, "cpu_seconds": cpu, "peak_mb": rss_mb(), "data_mb": data_mb,
            "clusters": settings.get("clusters")}


def recall(n: int, args: argparse.Namespace) -> None:
    """IVF (or HNSW) kNN, the sieves' index above EXACT_KNN_MAX, against exact search for 1000 query rows."""
    import faiss

    from lightning_juicer.sieves.neighbors import _chunked, _hnsw, _index, ivf_lists

    x = clustered_rows(n, 1, args.clusters, args.spread) if args.clusters else unit_rows(n, 1)
    queries = x[np.random.default_rng(0).choice(n, 1000, replace=False)]
    _, exact = _index(x, False).search(queries, args.knn + 1)
    data = f"{args.clusters} clusters, spread {args.spread}" if args.clusters else "uniform random unit rows"
    if args.knn_index == "hnsw":
        start, cpu = time.perf_counter(), cpu_seconds()
        index = _hnsw(x, args.ef_search)
        print(f"HNSW on {n:,} x {DIM} ({data}): build {time.perf_counter() - start:.1f} s, {cpu_seconds() - cpu:.1f} CPU s, "
              f"{faiss.omp_get_max_threads()} threads")
        for ef in args.efs:
            index.hnsw.efSearch = ef
            start, cpu = time.perf_counter(), cpu_seconds()
            _, found = _chunked(index, queries, args.knn + 1)
            per_query = (cpu_seconds() - cpu) / len(queries)
            hits = np.mean([len(set(a[1:]) & set(b[1:])) / args.knn for a, b in zip(exact, found)])
            print(f"  ef_search {ef:4d}: recall@{args.knn} {hits:.3f}, {per_query * 1e3:.2f} CPU ms/query "
                  f"-> all {n:,} rows ~{per_query * n / 60:.1f} CPU min")
        return
    nlist = ivf_lists(n)
    start = time.perf_counter()
    index = _index(x, False, nlist, 1)
    build = time.perf_counter() - start
    print(f"IVF on {n:,} x {DIM} ({data}): nlist {nlist}, build (train + add) {build:.1f} s, {faiss.omp_get_max_threads()} threads")
    for nprobe in args.nprobes:
        index.nprobe = nprobe
        start = time.perf_counter()
        _, found = _chunked(index, queries, args.knn + 1)
        per_query = (time.perf_counter() - start) / len(queries)
        hits = np.mean([len(set(a[1:]) & set(b[1:])) / args.knn for a, b in zip(exact, found)])
        print(f"  nprobe {nprobe:4d}: recall@{args.knn} {hits:.3f}, {per_query * 1e3:.2f} ms/query "
              f"-> all {n:,} rows ~{per_query * n / 60:.1f} min")


def fit_exponent(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) on log(N)."""
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0]) if len(ns) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--sieves", nargs="+", default=list(SIEVES), choices=SIEVES)
    parser.add_argument("--cluster-size", type=int, default=2000, help="clusters = N / this (cluster, SemDeDup, D4)")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024, help="negCLIPLoss batch")
    parser.add_argument("--repeats", type=int, default=1, help="negCLIPLoss repeats")
    parser.add_argument("--target", type=int, default=1024, help="NormSim target rows")
    parser.add_argument("--knn", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=8, help="D2's IVF nprobe above EXACT_KNN_MAX rows")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--knn-index", choices=("ivf", "hnsw"), default="ivf", help="D2's kNN index (sieve.init_args.index)")
    parser.add_argument("--ef-search", type=int, default=64, help="D2's HNSW ef_search")
    parser.add_argument("--efs", type=int, nargs="+", default=[32, 64, 128], help="--recall with hnsw: ef_search values")
    parser.add_argument("--recall", type=int, help="only measure kNN recall (--knn-index) on this many rows")
    parser.add_argument("--clusters", type=int, default=0,
                        help="rows around this many centres (0: uniform random unit rows), timed runs and --recall")
    parser.add_argument("--spread", type=float, default=1.0, help="--clusters: noise norm around a centre")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return
    if args.recall:
        recall(args.recall, args)
        return
    passed = [a for a in sys.argv[1:]]
    rows = []
    print(f"{'sieve':14s} {'N':>9s} {'wall s':>9s} {'CPU s':>9s} {'peak MB':>9s} {'data MB':>9s} {'extra MB':>9s}")
    for n in args.sizes:
        for sieve in args.sieves:
            cmd = [sys.executable, __file__, *passed, "--one", sieve, str(n)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                print(f"{sieve:14s} {n:9d} FAILED: {out.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{sieve:14s} {n:9d} {row['seconds']:9.2f} {row['cpu_seconds']:9.2f} {row['peak_mb']:9.0f} {row['data_mb']:9.0f} "
                  f"{row['peak_mb'] - row['data_mb']:9.0f}" + (f"  ({row['clusters']} clusters)" if row["clusters"] else ""),
                  flush=True)
    print("\ngrowth exponent b (time ~ N^b; N log N over 100k..1M ~ 1.06), fitted on CPU time and on wall time:")
    for sieve in args.sieves:
        mine = [r for r in rows if r["sieve"] == sieve and r["seconds"] > 0]
        b_cpu = fit_exponent([r["n"] for r in mine], [max(r["cpu_seconds"], 1e-3) for r in mine])
        b = fit_exponent([r["n"] for r in mine], [r["seconds"] for r in mine])
        peak = max((r["peak_mb"] for r in mine), default=math.nan)
        print(f"  {sieve:14s} b(CPU) = {b_cpu:5.2f}   b(wall) = {b:5.2f}   largest N peak {peak:,.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
