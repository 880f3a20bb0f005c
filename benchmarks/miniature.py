"""Miniature of the paper's Table 2 on the synthetic data: sample-level sieves vs token-level juicing at 50 %.

    python benchmarks/miniature.py --seeds 0 1                      # the full comparison (all arms)
    python benchmarks/miniature.py --steps 10 --seeds 0 --arms full random semdedup random_star datajuicer

Every arm is a normal ``python -m lightning_juicer fit`` of ``--config`` (the quickstart: same tiny
CLIP, optimiser, batch and seed for all arms) with overrides; the zero-shot and retrieval callbacks
of that config evaluate the final weights, and the table reports their top-1 and R@1 as mean ± std
over the seeds. The sieves' reference model is the Full arm of the first seed (a CLIP trained by
this project on all data, as DataComp uses a pretrained CLIP): its embeddings pass feeds every
sieve, each sieve keeps 50 % of the samples.

Budget (``--budget``): ``tokens`` (default, the paper's design, Tables 2-3) gives every compressed
arm 50 % of Full's image tokens: sieve arms train half of ``--steps`` on full images (the same
epochs over their half of the data), token-level arms train ``--steps`` on 50 % of the patches;
``steps`` trains every arm ``--steps``.

The DataJuicer arms are the whole method: a vision pass (``--governor``) and a text pass
(``--text-backend``, default ``rules``: offline) write sidecars for the training shards once, and
those arms train on the top-k patches from the sidecar scores with the juiced captions
(``--captions juiced``; ``original`` for vision-only juicing). ``--juicer-override`` adds further CLI
overrides to the DataJuicer arms only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SIEVE_ARMS = {"random": "random", "cluster": "cluster", "clip_score": "clip_score", "semdedup": "semdedup",
              "d4": "d4", "neg_clip_loss": "neg_clip_loss", "d2": "d2"}
TITLES = {"full": "Full data", "random": "Random", "cluster": "Cluster", "clip_score": "CLIP-Score",
          "semdedup": "SemDeDup", "d4": "D4", "neg_clip_loss": "negCLIPLoss", "d2": "D2 Pruning",
          "random_star": "Random*", "cluster_star": "Cluster*", "datajuicer": "DataJuicer",
          "datajuicer_sieve": "DataJuicer × Sieve"}
ARMS = ["full", "random", "cluster", "clip_score", "semdedup", "d4", "neg_clip_loss", "random_star", "cluster_star",
        "datajuicer", "datajuicer_sieve"]
METRICS = (("top1", "zero-shot top-1"), ("i2t_r1", "I→T R@1"), ("t2i_r1", "T→I R@1"))


def arm_config(base: dict, arm: str, seed: int, args: argparse.Namespace, keep: dict[str, Path]) -> tuple[dict, float]:
    """The fit config of one arm and seed, and its image tokens as a fraction of Full's."""
    cfg = copy.deepcopy(base)
    data = cfg["data"]["init_args"]
    steps = args.steps
    data.update(seed=seed, batch_size=args.batch_size, selection="full", keep_ratio=1.0)
    sieve = SIEVE_ARMS.get(arm) or (args.combo_sieve if arm == "datajuicer_sieve" else None)
    tokens = 1.0
    if sieve is not None:
        data["keep_list"] = str(keep[sieve])
    if arm in SIEVE_ARMS and args.budget == "tokens":
        steps = max(1, round(steps * args.fraction))
    if arm in ("random_star", "cluster_star", "datajuicer", "datajuicer_sieve"):
        data["keep_ratio"] = args.fraction
        data["selection"] = {"random_star": "random", "cluster_star": "cluster"}.get(arm, "topk")
        if arm != "random_star":
            data["scores"] = "on_the_fly"
            data["governor"] = {**(data.get("governor") or {}), "name": args.governor}
        if arm.startswith("datajuicer"):
            data.update(scores="sidecar", sidecar_dir=str(args.out / "sidecars"), captions=args.captions)
    if arm in SIEVE_ARMS or arm in ("random_star", "cluster_star", "datajuicer", "datajuicer_sieve"):
        tokens = steps * (data["keep_ratio"]) / args.steps
    cfg["seed_everything"] = seed
    trainer = cfg["trainer"]
    trainer.pop("val_check_interval", None)
    trainer.update(max_steps=steps, limit_val_batches=0, check_val_every_n_epoch=None, default_root_dir=str(args.out))
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(args.out), "name": arm, "version": f"seed{seed}"}}
    for callback in trainer.get("callbacks", []):
        init = callback.setdefault("init_args", {}) or {}
        callback["init_args"] = init
        if "every_n_steps" in init:
            init["every_n_steps"] = 0  # evaluate the final weights only
        if "every_n_train_steps" in init:
            init["every_n_train_steps"] = steps
    return cfg, tokens


def run(command: list[str], log_file: Path) -> None:
    """Run a command with this repository on PYTHONPATH, its output into ``log_file``; stop on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        code = subprocess.call(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-20:])
        sys.exit(f"failed ({code}): {' '.join(command)}\n{tail}\nfull log: {log_file}")


def final_metrics(log_dir: Path) -> dict[str, float] | None:
    """The last evaluation's values by metric from a run's results.json (None if the run has none)."""
    path = log_dir / "results.json"
    if not path.is_file():
        return None
    out: dict[str, float] = {}
    for record in json.loads(path.read_text()):
        out[record["metric"]] = record["value"]
    return out


def fit(base: dict, arm: str, seed: int, args: argparse.Namespace, keep: dict[str, Path]) -> dict:
    """Train and evaluate one arm and seed (skipped when its results exist); its metrics, tokens and minutes."""
    cfg, tokens = arm_config(base, arm, seed, args, keep)
    log_dir = args.out / arm / f"seed{seed}"
    metrics = final_metrics(log_dir)
    seconds = 0.0
    if metrics is None:
        config = args.out / "configs" / f"{arm}-seed{seed}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] fit {arm} seed {seed}: {cfg['trainer']['max_steps']} steps", flush=True)
        run([sys.executable, "-m", "lightning_juicer", "fit", "--config", str(config), *args.extra(arm)],
            args.out / "logs" / f"{arm}-seed{seed}.log")
        seconds = time.perf_counter() - start
        metrics = final_metrics(log_dir)
        if metrics is None:
            sys.exit(f"{arm} seed {seed}: no results.json in {log_dir}; does --config evaluate (zero-shot, retrieval)?")
    return {"metrics": metrics, "tokens": tokens, "minutes": seconds / 60, "log_dir": str(log_dir)}


def make_keep_lists(args: argparse.Namespace, reference: Path, train_shards: str, sieves: set[str]) -> dict[str, Path]:
    """Embeddings of the training shards by the reference, then one keep list per sieve at ``--fraction``."""
    emb_dir = args.out / "embeddings"
    run([sys.executable, "preprocess/embeddings.py", "--config", "configs/preprocess/embeddings.yaml",
         "--shards", train_shards, "--out_dir", str(emb_dir), "--reference.name", str(reference), "--num_workers", "1",
         "--progress", "false"], args.out / "logs" / "embeddings.log")
    names = sorted(p.name for p in emb_dir.glob("*.emb.parquet"))
    spec = [str(emb_dir / n) for n in names]
    keep = {}
    for sieve in sorted(sieves):
        out = args.out / "keep" / f"{sieve}.json"
        if not out.is_file():
            own = {"cluster": ["clusters"], "semdedup": ["clusters"], "d4": ["clusters"],
                   "neg_clip_loss": ["batch_size"]}.get(sieve, [])
            values = {"clusters": args.clusters, "batch_size": args.negclip_batch}
            run([sys.executable, "preprocess/sieve.py", "--config", "configs/preprocess/sieve.yaml",
                 "--sieve", sieve, "--fraction", str(args.fraction), "--embeddings", json.dumps(spec), "--out", str(out),
                 *(a for name in own for a in (f"--sieve.init_args.{name}", str(values[name])))],
                args.out / "logs" / f"sieve-{sieve}.log")
        keep[sieve] = out
    return keep


def make_juiced_sidecars(args: argparse.Namespace, train_shards: str) -> None:
    """The method's two offline passes over the training shards: vision (scores, evidence), then text (captions)."""
    sidecars = args.out / "sidecars"
    common = ["--shards", train_shards, "--sidecar_dir", str(sidecars), "--progress", "false"]
    run([sys.executable, "preprocess/vision_pass.py", "--config", "configs/preprocess/vision.yaml", *common,
         "--governor.name", args.governor, "--num_workers", "1", "--batch_size", "256"],
        args.out / "logs" / "vision_pass.log")
    run([sys.executable, "preprocess/text_pass.py", "--config", "configs/preprocess/text.yaml", *common,
         "--backend", args.text_backend], args.out / "logs" / "text_pass.log")


def fmt(values: list[float]) -> str:
    """mean ± std in percent (std over seeds; '±  -' for one seed)."""
    mean = 100 * statistics.fmean(values)
    std = f"{100 * statistics.stdev(values):.1f}" if len(values) > 1 else "-"
    return f"{mean:.1f} ± {std}"


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The markdown table: one row per arm, metrics as mean ± std over seeds."""
    head = ["method", "level", "image tokens", *[name for _, name in METRICS], "minutes / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in args.arms:
        runs = results.get(arm)
        if not runs:
            continue
        level = "—" if arm == "full" else ("sample" if arm in SIEVE_ARMS else "token")
        if arm == "datajuicer_sieve":
            level = f"token × sample ({TITLES[args.combo_sieve]})"
        cells = [TITLES[arm], level, f"{100 * runs[0]['tokens']:.0f} %"]
        for key, _ in METRICS:
            values = [r["metrics"][key] for r in runs if key in r["metrics"]]
            cells.append(fmt(values) if values else "n/a")
        minutes = [r["minutes"] for r in runs if r["minutes"]]
        cells.append(f"{statistics.fmean(minutes):.1f}" if minutes else "(cached)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse flags, run the arms seed by seed, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the fit config every arm starts from")
    parser.add_argument("--steps", type=int, default=None, help="training steps of Full (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=list(TITLES))
    parser.add_argument("--fraction", type=float, default=0.5, help="kept samples (sieves) / kept patches (tokens)")
    parser.add_argument("--budget", choices=("tokens", "steps"), default="tokens")
    parser.add_argument("--combo-sieve", default="d4", choices=sorted(SIEVE_ARMS), help="the sieve of DataJuicer × Sieve")
    parser.add_argument("--governor", default="juicer-synthetic")
    parser.add_argument("--clusters", type=int, default=24, help="k-means clusters of the sieves")
    parser.add_argument("--negclip-batch", type=int, default=512, help="negCLIPLoss random batch size B")
    parser.add_argument("--captions", choices=("juiced", "original", "mix"), default="juiced",
                        help="caption source of the DataJuicer arms (juiced: the text pass's)")
    parser.add_argument("--text-backend", default="rules", help="text pass backend for the juiced captions")
    parser.add_argument("--juicer-override", action="append", default=[],
                        help="extra fit arguments for the DataJuicer arms")
    parser.add_argument("--out", type=Path, default=Path("runs/miniature"))
    parser.add_argument("--table", type=Path, default=None, help="markdown file for the table (default: <out>/table.md)")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / args.config).read_text())
    args.steps = args.steps or int(base["trainer"]["max_steps"])
    args.batch_size = args.batch_size or int(base["data"]["init_args"].get("batch_size", 64))
    args.out = args.out.resolve()
    juicer = [a for o in args.juicer_override for a in o.split()]
    args.extra = lambda arm: juicer if arm.startswith("datajuicer") else []
    if "full" not in args.arms:
        args.arms = ["full", *args.arms]  # the reference model of the sieves
    started = time.perf_counter()
    sieves = {SIEVE_ARMS[a] for a in args.arms if a in SIEVE_ARMS}
    if "datajuicer_sieve" in args.arms:
        sieves.add(args.combo_sieve)
    results: dict[str, list[dict]] = {}
    keep: dict[str, Path] = {}
    synthetic = base["data"]["init_args"].get("synthetic", {}).get("root", "data/synthetic")
    for i, seed in enumerate(args.seeds):
        results.setdefault("full", []).append(fit(base, "full", seed, args, keep))
        if i == 0:  # the first fit generated the synthetic data
            from lightning_juicer.synthetic import synthetic_paths

            train_shards = synthetic_paths(REPO / synthetic).train_shards
            if sieves:
                reference = Path(results["full"][0]["log_dir"]) / "checkpoints" / "last.ckpt"
                keep = make_keep_lists(args, reference, train_shards, sieves)
            if any(arm.startswith("datajuicer") for arm in args.arms):
                make_juiced_sidecars(args, train_shards)
        for arm in args.arms:
            if arm != "full":
                results.setdefault(arm, []).append(fit(base, arm, seed, args, keep))
    minutes = (time.perf_counter() - started) / 60
    command = "python benchmarks/miniature.py " + " ".join(sys.argv[1:])
    kept = {s: json.loads(p.read_text())["achieved_fraction"] for s, p in keep.items()}
    text = (f"{table(results, args)}\n\nCommand: `{command}` ({len(args.seeds)} seed(s), Full = {args.steps} steps × "
            f"batch {args.batch_size}, budget {args.budget}, fraction {args.fraction}; {minutes:.1f} min in all). "
            f"Achieved sieve fractions: {kept}.\n")
    out = args.table or args.out / "table.md"
    out.write_text(text)
    print(text)
    print(f"table: {out}")


if __name__ == "__main__":
    main()
