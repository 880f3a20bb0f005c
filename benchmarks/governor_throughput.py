"""Governor throughput of the precomputed vision pass, end to end (JPEG decode included).

    python benchmarks/governor_throughput.py                        # CPU, DINO ViT-S/16 architecture
    python benchmarks/governor_throughput.py --images 20000 --batch-size 512 --num-workers 16   # GPU, bf16

Random governor weights (the compute is the same as DINO's); images are generated 224 px synthetic
scenes written as webdataset shards. Prints images/s of the whole pass (decode, resize, score,
class head, sidecar writing) as the manifest reports it, and of the governor forward alone, each
repeated ``--rounds`` times, alternating (median and min-max).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lightning_juicer.data.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.passes.vision import run_vision_pass


def governor_forward_rate(name: str, batch_size: int, device: str, steps: int = 5) -> float:
    """Images/s of the governor's scoring forward alone on random inputs."""
    scorer = load_governor(name, pretrained=False, device=device)
    images = torch.randn(batch_size, 3, *scorer.image_size, device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        scorer(images)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            scorer(images)
        if device == "cuda":
            torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--governor", default="vit_small_patch16_224.dino")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--root", default=None, help="where to generate the 224 px shards (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = Path(args.root or tempfile.mkdtemp()) / "bench224"
    data = prepare_synthetic(SyntheticConfig(root=str(root), image_size=224, num_train=args.images,
                                             samples_per_shard=max(1, args.images // max(1, args.num_workers)),
                                             num_val=8, eval_per_class=1, num_retrieval=5))
    passes, forwards = [], []
    for round_ in range(args.rounds):
        manifest = run_vision_pass({
            "shards": data.train_shards, "sidecar_dir": str(root / f"side{round_}"),
            "governor": {"name": args.governor, "pretrained": False}, "batch_size": args.batch_size,
            "num_workers": args.num_workers, "devices": 1, "progress": False,
        })
        passes.append(manifest["run"]["images_per_second"])
        forwards.append(governor_forward_rate(args.governor, args.batch_size, device))
    totals = manifest["totals"]
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} ({torch.get_num_threads()} threads), "
          f"{args.rounds} alternating rounds")
    print(f"vision pass end to end: {statistics.median(passes):.1f} images/s ({min(passes):.1f}-{max(passes):.1f}) "
          f"({totals['samples_written']} images, {totals['shards']} shards, batch {args.batch_size}, "
          f"{args.num_workers} workers)")
    print(f"governor forward alone: {statistics.median(forwards):.1f} images/s ({min(forwards):.1f}-{max(forwards):.1f})")

if __name__ == "__main__":
    main()
