"""DataModule samples/s from the same shards: full images vs precomputed top-k vs on-the-fly scoring.

    python benchmarks/datamodule_throughput.py                       # 64 px synthetic, the shipped governor
    python benchmarks/datamodule_throughput.py --image-size 224 --governor vit_small_patch16_224.dino \
        --student ViT-B-16 --images 8192 --batch-size 256 --num-workers 8          # real-size, GPU

Target: precomputed top-k selection at >= 0.95x the samples/s of full images (selection is free);
on-the-fly adds the governor's forward on the device after transfer. The four streams are measured
interleaved in ``--rounds`` rounds (each round starts one stream later); printed are the median
samples/s with min-max and the per-round ratio to full images, median (min-max).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.passes.vision import run_vision_pass
from lightning_juicer.models.governed import build_governor


def samples_per_second(dm: JuicerDataModule, device: str, batches: int) -> float:
    """Samples/s of the training stream, including the transfer, on_after_batch_transfer and (on the fly) the
    frozen governor's selection as JuicerCLIP's training step runs it (bf16 autocast on a GPU, as bf16-mixed)."""
    dm.setup("fit")
    selection = dm.on_the_fly_selection
    governor = build_governor(selection, dm.data_spec).to(device) if selection is not None else None
    loader = iter(dm.train_dataloader())
    next(loader)  # start the workers
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(loader)
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch = dm.on_after_batch_transfer(batch, 0)
        if governor is not None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                batch["keep"], _ = governor(batch["image"])
        seen += batch["image"].shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    """Run the benchmark and print samples/s per mode and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--governor", default="vit_small_patch16_224.dino", help="juicer-synthetic once shipped")
    parser.add_argument("--student", default="ViT-B-16", help="open_clip model whose tokenizer/normalisation to use")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--keep-ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = Path(args.root or tempfile.mkdtemp()) / f"bench{args.image_size}"
    data = prepare_synthetic(SyntheticConfig(root=str(root), image_size=args.image_size, num_train=args.images,
                                             samples_per_shard=max(1, args.images // (2 * max(1, args.num_workers))),
                                             num_val=8, eval_per_class=1, num_retrieval=5))
    pretrained = args.governor == "juicer-synthetic"
    run_vision_pass({"shards": data.train_shards, "sidecar_dir": str(root / "side"),
                     "governor": {"name": args.governor, "pretrained": pretrained}, "batch_size": 128,
                     "num_workers": args.num_workers, "devices": 1, "progress": False})
    spec = DataSpec(image_size=args.image_size, patch_size=args.patch_size, tokenizer=open_clip.get_tokenizer(args.student))
    governor = GovernorConfig(name=args.governor, pretrained=pretrained)
    common = dict(train_shards=data.train_shards, batch_size=args.batch_size, num_workers=args.num_workers,
                  keep_ratio=args.keep_ratio, data_spec=spec, governor=governor)
    modes = {
        "full": dict(selection="full"),
        "random": dict(selection="random"),
        "topk precomputed": dict(selection="topk", scores="sidecar", sidecar_dir=str(root / "side")),
        "topk on the fly": dict(selection="topk", scores="on_the_fly"),
    }
    modules = {name: JuicerDataModule(**common, **mode) for name, mode in modes.items()}
    names = list(modules)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            rates[name].append(samples_per_second(modules[name], device, args.batches))
    print(f"device: {device}, {args.image_size} px, batch {args.batch_size}, {args.num_workers} workers, r={args.keep_ratio}, "
          f"{args.rounds} interleaved rounds of {args.batches} batches")
    for name, values in rates.items():
        ratio = [v / f for v, f in zip(values, rates["full"])]
        print(f"{name:>18}: {statistics.median(values):8.1f} samples/s ({min(values):.1f}-{max(values):.1f})   "
              f"{statistics.median(ratio):.2f}x of full ({min(ratio):.2f}-{max(ratio):.2f})")

if __name__ == "__main__":
    main()
