"""What each selection strategy keeps: object and context (background) patch coverage on held-out synthetic scenes.

Usage:
    python benchmarks/selection_coverage.py --governor juicer-synthetic --images 200 --seeds 0 1 2 --ratios 0.25 0.5

Scenes come from the governor-quality stream no training scene is drawn from (``governor.quality.EVAL_STREAM``),
rendered at the governor's image size with its patch as the grid cell; a cell is an object patch when at least
25 % of its pixels belong to an object (``OBJECT_PATCH_THRESHOLD``), else context. For every registered strategy
but ``full``: the share of object patches kept and of context patches kept (pooled over the images), mean ± std over
seeds (each seed: other scenes and other random draws). This describes what a strategy hands the student at a
budget; it is not a training result.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.online import OnlineSelector
from lightning_juicer.governor.quality import EVAL_STREAM, OBJECT_PATCH_THRESHOLD, render_scenes, to_tensor
from lightning_juicer.selection import STRATEGIES


@torch.no_grad()
def coverage(scorer, name: str, keep_ratio: float, num_images: int, seed: int) -> tuple[float, float]:
    """(object patches kept / object patches, context patches kept / context patches) for one strategy and seed."""
    scenes = render_scenes(range(num_images), EVAL_STREAM, seed, scorer.image_size[0], scorer.patch_size[0])
    images = to_tensor(scenes.images, scorer.mean, scorer.std)
    selector = OnlineSelector(scorer, name, keep_ratio, scenes.grid, scorer.mean, scorer.std)
    keep, _ = selector.strategy(selector.inputs(images), keep_ratio, torch.Generator().manual_seed(seed))
    is_object = torch.from_numpy(scenes.patch_fraction >= OBJECT_PATCH_THRESHOLD)
    kept = torch.zeros_like(is_object).scatter_(1, keep, True)
    return float((kept & is_object).sum() / is_object.sum()), float((kept & ~is_object).sum() / (~is_object).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--governor", default="juicer-synthetic")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    scorer = load_governor(args.governor).eval()
    print(f"governor {args.governor}, {args.images} held-out scenes x {len(args.seeds)} seeds\n")
    print("| strategy | r | object patches kept (%) | context patches kept (%) |\n|---|---|---|---|")
    for ratio in args.ratios:
        for name in (n for n in STRATEGIES if n != "full"):
            runs = [coverage(scorer, name, ratio, args.images, seed) for seed in args.seeds]
            cells = []
            for values in zip(*runs):
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}")
            print(f"| `{name}` | {ratio} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
