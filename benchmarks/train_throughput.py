"""Training throughput at keep ratios 1.0 / 0.5 / 0.25: the variable-token tower vs open_clip's patch dropout.

    python benchmarks/train_throughput.py                                   # ViT-B-16, random weights
    python benchmarks/train_throughput.py --model ViT-S-32 --batch-size 8 --steps 2 --warmup 1   # quick CPU check
    python benchmarks/train_throughput.py --batch-size 128 --steps 20 --compile --json out.json  # GPU

For each ratio r it times, on the same random images and captions:

- ``juicer``: JuicerCLIP's training step (image tower on CLS + the k = round(r m) top-k patches of
  random scores, selected on the device inside the step; text tower; open_clip ClipLoss; AdamW step),
  and the image tower's forward + backward alone;
- ``open_clip``: open_clip's own CLIP with its random ``PatchDropout`` at prob 1 - r, the same two.

Reported per row: training-step images/s and image tokens/s (CLS + kept patches), image-tower
forward+backward ms, memory (GPU: peak allocated during a step; everywhere: bytes saved for
backward by a step's forward, i.e. activations), and image-tower forward GFLOPs per image
(torch.utils.flop_counter, a multiply-add counted as 2 FLOPs). GPU runs use bf16 autocast, fused
AdamW and open_clip's attention through PyTorch SDPA; ``--compile`` compiles both towers' transformers.

Robustness (issue 15): the six arms (2 implementations x 3 ratios) are measured in ``--rounds`` rounds,
interleaved (each round visits every arm, starting one arm later than the previous round), so a busy
machine slows every arm alike; times are the median over rounds with the spread (max - min) / median,
and every ratio is taken within a round and printed as median (min-max). Memory is measured once per
arm: the whole step's and the image tower's alone (activations everywhere, peak on a GPU).

Targets (issue 4), as ratios from one run: image tower at r = 0.5 >= 1.9x (GPU) / 2.0x (CPU) faster
than at r = 1.0; top-k training step at most 5 % slower than open_clip's patch dropout at the same r;
peak memory at r = 0.5 <= 0.6x r = 1.0; forward FLOPs at r = 0.5 / 0.25 <= the paper's 7.7 / 4.8 of 13.2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from lightning_juicer.selection import keep_count, select_topk
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.optim import param_groups
from lightning_juicer.models.tower import encode_kept

RATIOS = (1.0, 0.5, 0.25)
PAPER_FLOPS = {1.0: 13.2, 0.5: 7.7, 0.25: 4.8}  # GFLOPs of CLIP ViT-B/16 inference, paper Tab. 4


@dataclass
class Row:
    """Measurements of one implementation at one keep ratio."""

    impl: str
    ratio: float
    tokens: int
    step_ms: float
    images_per_s: float
    tokens_per_s: float
    tower_ms: float
    activation_mb: float
    peak_mb: float | None
    gflops_per_image: float
    step_spread: float = 0.0  # (max - min) / median over the rounds
    tower_spread: float = 0.0
    tower_activation_mb: float = 0.0  # image tower forward alone
    tower_peak_mb: float | None = None
    step_ms_rounds: tuple[float, ...] = ()
    tower_ms_rounds: tuple[float, ...] = ()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Mean wall time of ``fn()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def saved_activation_bytes(fn, model: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward while ``fn()`` runs its forward."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(backward=False)
    return sum(storages.values())


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak GPU memory allocated during one ``fn()`` (weights, gradients and optimizer state included)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def forward_flops(tower_forward) -> int:
    """FLOPs of one image-tower forward on one image."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tower_forward()
    return counter.get_total_flops()


class Juicer:
    """JuicerCLIP's training step: top-k of (random) patch scores, variable-token image tower, ClipLoss, AdamW."""

    name = "juicer"

    def __init__(self, model_name: str, device: torch.device, fused: bool) -> None:
        self.module = JuicerCLIP(model_name=model_name).to(device)
        self.model = self.module.model
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.05), lr=1e-5, fused=fused)
        self.ratio, self.scores = 1.0, None

    def set_ratio(self, ratio: float, scores: torch.Tensor) -> None:
        """Keep ratio for the next calls; ``scores`` [B, m] stand for the governor's (sidecar or on-the-fly)."""
        self.ratio, self.scores = ratio, scores

    def keep(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Top-k kept patches, selected on the device as part of the timed work."""
        return None if self.ratio >= 1.0 else select_topk(scores, keep_count(scores.shape[1], self.ratio))

    def features(self, image: torch.Tensor, text: torch.Tensor):
        """Normalised image/text features and the logit scale (JuicerCLIP.forward's open_clip output dict)."""
        out = self.module({"image": image, "keep": self.keep(self.scores), "text": text})
        return out["image_features"], out["text_features"], out["logit_scale"]

    def tower(self, image: torch.Tensor) -> torch.Tensor:
        """Image embeddings of the kept patches."""
        return encode_kept(self.model.visual, image, self.keep(self.scores[: len(image)]))[0]


class OpenClipDropout:
    """open_clip's CLIP with its random PatchDropout (prob 1 - r, training mode), the reference."""

    name = "open_clip"

    def __init__(self, model_name: str, device: torch.device, fused: bool) -> None:
        self.model = open_clip.create_model(model_name, force_patch_dropout=0.5, output_dict=True).to(device).train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.05), lr=1e-5, fused=fused)

    def set_ratio(self, ratio: float, scores: torch.Tensor) -> None:
        """PatchDropout keeps int(m (1 - prob)) patches: the same k as round(r m) for these ratios."""
        self.model.visual.patch_dropout.prob = 1.0 - ratio

    def features(self, image: torch.Tensor, text: torch.Tensor):
        """Normalised image/text features and the logit scale (open_clip's CLIP.forward)."""
        out = self.model(image, text)
        return out["image_features"], out["text_features"], out["logit_scale"]

    def tower(self, image: torch.Tensor) -> torch.Tensor:
        """Image embeddings after patch dropout."""
        return self.model.visual(image)


def tower_flops(impl, ratio: float, image, scores, autocast) -> int:
    """Forward FLOPs of ``impl``'s image tower on one image at ``ratio`` (before any torch.compile)."""
    impl.set_ratio(ratio, scores)
    with autocast():
        return forward_flops(lambda: impl.tower(image[:1]))


class Arm:
    """One implementation at one keep ratio: its step and tower callables and the per-round times."""

    def __init__(self, impl, ratio: float, image, text, scores, autocast) -> None:
        self.impl, self.ratio, self.image, self.text, self.scores = impl, ratio, image, text, scores
        self.autocast, self.loss_fn = autocast, ClipLoss()
        self.step_s: list[float] = []
        self.tower_s: list[float] = []

    def train_step(self, backward: bool = True) -> None:
        self.impl.set_ratio(self.ratio, self.scores)
        with self.autocast():
            loss = self.loss_fn(*self.impl.features(self.image, self.text))
        if backward:
            loss.backward()
            self.impl.optimizer.step()
            self.impl.optimizer.zero_grad(set_to_none=True)

    def tower_step(self, backward: bool = True) -> None:
        self.impl.set_ratio(self.ratio, self.scores)
        with self.autocast():
            features = self.impl.tower(self.image)
        if backward:
            features.float().square().mean().backward()
            self.impl.model.zero_grad(set_to_none=True)

    def time_round(self, args, device) -> None:
        """One round: the training step, then the tower's forward + backward."""
        self.step_s.append(seconds_per_call(self.train_step, args.steps, args.warmup, device))
        self.tower_s.append(seconds_per_call(self.tower_step, args.steps, args.warmup, device))

    def row(self, device, flops: int) -> Row:
        """Medians over the rounds, spreads, and memory (measured once, here)."""
        activations = saved_activation_bytes(self.train_step, self.impl.model)
        tower_activations = saved_activation_bytes(self.tower_step, self.impl.model)
        peak = peak_bytes(self.train_step, device)
        tower_peak = peak_bytes(self.tower_step, device)
        num_patches = self.scores.shape[1]
        tokens = 1 + (num_patches if self.ratio >= 1.0 else keep_count(num_patches, self.ratio))
        batch = self.image.shape[0]
        step_s, tower_s = statistics.median(self.step_s), statistics.median(self.tower_s)
        return Row(self.impl.name, self.ratio, tokens, 1e3 * step_s, batch / step_s, batch * tokens / step_s,
                   1e3 * tower_s, activations / 2**20, None if peak is None else peak / 2**20, flops / 1e9,
                   spread(self.step_s), spread(self.tower_s), tower_activations / 2**20,
                   None if tower_peak is None else tower_peak / 2**20,
                   tuple(1e3 * t for t in self.step_s), tuple(1e3 * t for t in self.tower_s))


def spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


def per_round(a: tuple[float, ...], b: tuple[float, ...]) -> list[float]:
    """Ratios a_i / b_i of the same round."""
    return [x / y for x, y in zip(a, b)]


def report(rows: list[Row], device: torch.device) -> list[str]:
    """The table and the target ratios (median over rounds, min-max), as printed lines."""
    lines = [f"{'impl':<10} {'r':>5} {'tokens':>6} {'step ms':>9} {'+-%':>4} {'img/s':>8} {'img tok/s':>10} "
             f"{'tower ms':>9} {'+-%':>4} {'act MB':>8} {'tower act':>9} {'peak MB':>8} {'tower pk':>8} {'GFLOPs/img':>10}"]
    for r in rows:
        peak = f"{r.peak_mb:8.0f}" if r.peak_mb is not None else f"{'-':>8}"
        tpeak = f"{r.tower_peak_mb:8.0f}" if r.tower_peak_mb is not None else f"{'-':>8}"
        lines.append(f"{r.impl:<10} {r.ratio:5.2f} {r.tokens:6d} {r.step_ms:9.1f} {100 * r.step_spread:4.0f} "
                     f"{r.images_per_s:8.1f} {r.tokens_per_s:10.0f} {r.tower_ms:9.1f} {100 * r.tower_spread:4.0f} "
                     f"{r.activation_mb:8.1f} {r.tower_activation_mb:9.1f} {peak} {tpeak} {r.gflops_per_image:10.2f}")
    get = {(r.impl, r.ratio): r for r in rows}
    j1, j5, j25 = (get[("juicer", x)] for x in RATIOS)
    tower_target = 1.9 if device.type == "cuda" else 2.0

    def check(label: str, values: list[float] | float, ok, target: str) -> str:
        values = [values] if isinstance(values, float) else values
        mid = statistics.median(values)
        good = ok(mid) if callable(ok) else ok
        span = f"({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
        return f"  {label:<52} {mid:6.3f} {span:<15} target {target:<8} {'ok' if good else 'MISSED'}"

    lines += ["", f"ratios: median over {len(j1.tower_ms_rounds)} interleaved rounds (min-max), each within one round",
              check("image tower speed-up r=0.5 vs r=1.0", per_round(j1.tower_ms_rounds, j5.tower_ms_rounds),
                    lambda v: v >= tower_target, f">= {tower_target}"),
              check("image tower speed-up r=0.25 vs r=1.0 (paper 3.7x)", per_round(j1.tower_ms_rounds, j25.tower_ms_rounds),
                    True, "-"),
              check("training step speed-up r=0.5 vs r=1.0", per_round(j1.step_ms_rounds, j5.step_ms_rounds), True, "-")]
    for ratio in RATIOS:
        if ("open_clip", ratio) in get:
            cost = per_round(get[("juicer", ratio)].step_ms_rounds, get[("open_clip", ratio)].step_ms_rounds)
            lines.append(check(f"top-k step time / open_clip patch dropout, r={ratio:g}", cost, lambda v: v <= 1.05,
                               "<= 1.05"))
    if j1.peak_mb is not None:
        lines.append(check("peak memory r=0.5 / r=1.0 (whole step)", j5.peak_mb / j1.peak_mb, lambda v: v <= 0.6, "<= 0.6"))
        lines.append(check("peak memory r=0.5 / r=1.0 (image tower alone)", j5.tower_peak_mb / j1.tower_peak_mb,
                           lambda v: v <= 0.6, "<= 0.6"))
    lines.append(check("activation memory r=0.5 / r=1.0 (whole step)", j5.activation_mb / j1.activation_mb,
                       lambda v: v <= 0.6, "<= 0.6"))
    lines.append(check("activation memory r=0.5 / r=1.0 (image tower alone)",
                       j5.tower_activation_mb / j1.tower_activation_mb, lambda v: v <= 0.6, "<= 0.6"))
    for ratio, row in ((0.5, j5), (0.25, j25)):
        flops = row.gflops_per_image / j1.gflops_per_image
        paper = PAPER_FLOPS[ratio] / PAPER_FLOPS[1.0]
        lines.append(check(f"FLOPs r={ratio:g} / r=1.0 (paper {PAPER_FLOPS[ratio]}/13.2)", flops,
                           lambda v, p=paper: v <= p, f"<= {paper:.3f}"))
    return lines


def main() -> None:
    """Measure both implementations at every ratio and print the table and the target ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 16 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per arm and round (default 10 GPU / 2 CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds over all arms (default 5 GPU / 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU / 1 CPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile both towers' transformers")
    parser.add_argument("--no-reference", action="store_true", help="skip open_clip's patch-dropout reference")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if on_gpu else 16)
    args.steps = args.steps or (10 if on_gpu else 2)
    args.rounds = args.rounds or (5 if on_gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and on_gpu)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    torch.manual_seed(0)
    probe = open_clip.create_model(args.model)
    image_size, patch = probe.visual.image_size, probe.visual.patch_size
    num_patches = (image_size[0] // patch[0]) * (image_size[1] // patch[1])
    context, vocab = probe.context_length, probe.vocab_size
    del probe
    image = torch.randn(args.batch_size, 3, *image_size, device=device)
    text = torch.randint(1, vocab, (args.batch_size, context), device=device)
    scores = torch.randn(args.batch_size, num_patches, device=device)
    print(f"{args.model} (random weights), {device}{' ' + torch.cuda.get_device_name(device) if on_gpu else ''}, "
          f"batch {args.batch_size}, {'bf16 autocast' if bf16 else 'fp32'}, fused AdamW, "
          f"compile {args.compile}, {num_patches} patches, {args.rounds} interleaved rounds of {args.steps} timed "
          f"steps after {args.warmup} per arm")
    classes = (Juicer,) if args.no_reference else (Juicer, OpenClipDropout)
    arms, flops = [], {}
    for cls in classes:
        impl = cls(args.model, device, fused=device.type in ("cuda", "cpu"))
        for ratio in RATIOS:
            flops[(impl.name, ratio)] = tower_flops(impl, ratio, image, scores, autocast)
        if args.compile:
            impl.model.visual.transformer = torch.compile(impl.model.visual.transformer)
            impl.model.transformer = torch.compile(impl.model.transformer)
        arms += [Arm(impl, ratio, image, text, scores, autocast) for ratio in RATIOS]
    for round_ in range(args.rounds):
        start = round_ % len(arms)
        for arm in arms[start:] + arms[:start]:
            arm.time_round(args, device)
        print(f"  round {round_ + 1}/{args.rounds}: step ms " + " ".join(
            f"{a.impl.name}@{a.ratio:g}={1e3 * a.step_s[-1]:.0f}" for a in arms), flush=True)
    rows = [arm.row(device, flops[(arm.impl.name, arm.ratio)]) for arm in arms]
    del arms
    gc.collect()
    print("\n".join([""] + report(rows, device)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": str(device), "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
