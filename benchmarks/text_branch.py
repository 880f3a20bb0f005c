"""Text branch figures: the rules backend's repair rate on the synthetic data, and captions/s of the backends.

    python benchmarks/text_branch.py                     # quickstart data (data/synthetic), tiny LLM on CPU
    python benchmarks/text_branch.py --llm-size small    # GPU: a ~1B-parameter Llama-shaped random model, bf16

Repair rate: vision pass (juicer-synthetic) -> text pass (rules) into a temporary folder, measured against
the generator's clean captions (``lightning_juicer/text/repairs.py``). Throughput: the backends'
``rewrite`` on the dataset's captions with their evidence, after one warm-up batch (random LLM weights:
the compute per token is a real model's, the answers are noise; generation runs to the new-token budget
unless EOS comes first, so the figure is per caption at that budget).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lightning_juicer.data.shards import expand_shards
from lightning_juicer.data.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.governor.sidecar import read_sidecar, sidecar_path
from lightning_juicer.governor.vision_pass import run_vision_pass
from lightning_juicer.text.backends import TransformersBackend, TransformersConfig
from lightning_juicer.text.prompts import PromptConfig, Request
from lightning_juicer.text.repairs import repair_counts, repair_rates, synthetic_records
from lightning_juicer.text.text_pass import run_text_pass
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = prepare_synthetic(SyntheticConfig(root=args.root))
    urls = expand_shards(paths.train_shards, "--root")
    with tempfile.TemporaryDirectory() as tmp:
        common = {"shards": paths.train_shards, "num_workers": 0, "devices": 1, "progress": False}
        run_vision_pass({**common, "sidecar_dir": f"{tmp}/vision", "governor": {"name": "juicer-synthetic"},
                         "accelerator": "cpu"})
        manifest = run_text_pass({**common, "sidecar_dir": f"{tmp}/vision", "output_dir": f"{tmp}/rules",
                                  "backend": {"name": "rules"}, "accelerator": "cpu"})
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
        backend = TransformersBackend(TransformersConfig(model=str(folder), max_new_tokens=args.max_new_tokens),
                                      PromptConfig())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        backend.module.to(device)
        params = sum(p.numel() for p in backend.module.parameters())
        timed = requests[: args.llm_captions]
        speed = rate(backend.rewrite, timed, args.batch_size)
        print(f"transformers backend, random {args.llm_size} Llama ({params / 1e6:.1f} M parameters, "
              f"{backend.module.dtype}) on {device}, batch {args.batch_size}, <= {args.max_new_tokens} new tokens: "
              f"{speed:.1f} captions/s over {len(timed)} captions (threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
