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

Targets (issue 4), as ratios from one run: image tower at r = 0.5 >= 1.9x (GPU) / 2.0x (CPU) faster
than at r = 1.0; top-k training step at most 5 % slower than open_clip's patch dropout at the same r;
peak memory at r = 0.5 <= 0.6x r = 1.0; forward FLOPs at r = 0.5 / 0.25 <= the paper's 7.7 / 4.8 of 13.2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from dataclasses import asdict, dataclass

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from lightning_juicer.governor.selection import keep_count, select_topk
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.models.optim import param_groups
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


def measure(impl, ratio: float, image, text, scores, args, device, autocast, flops: int) -> Row:
    """One row: training step, tower fwd+bwd and memory of ``impl`` at ``ratio``."""
    loss_fn = ClipLoss()
    impl.set_ratio(ratio, scores)

    def train_step(backward: bool = True) -> None:
        with autocast():
            loss = loss_fn(*impl.features(image, text))
        if backward:
            loss.backward()
            impl.optimizer.step()
            impl.optimizer.zero_grad(set_to_none=True)

    def tower_step() -> None:
        with autocast():
            features = impl.tower(image)
        features.float().square().mean().backward()
        impl.model.zero_grad(set_to_none=True)

    step_s = seconds_per_call(train_step, args.steps, args.warmup, device)
    tower_s = seconds_per_call(tower_step, args.steps, args.warmup, device)
    activations = saved_activation_bytes(train_step, impl.model)
    peak = peak_bytes(train_step, device)
    num_patches = scores.shape[1]
    tokens = 1 + (num_patches if ratio >= 1.0 else keep_count(num_patches, ratio))
    batch = image.shape[0]
    return Row(impl.name, ratio, tokens, 1e3 * step_s, batch / step_s, batch * tokens / step_s, 1e3 * tower_s,
               activations / 2**20, None if peak is None else peak / 2**20, flops / 1e9)


def report(rows: list[Row], device: torch.device) -> list[str]:
    """The table and the target ratios, as printed lines."""
    lines = [f"{'impl':<10} {'r':>5} {'tokens':>6} {'step ms':>9} {'img/s':>9} {'img tok/s':>11} "
             f"{'tower ms':>9} {'act MB':>9} {'peak MB':>9} {'GFLOPs/img':>10}"]
    for r in rows:
        peak = f"{r.peak_mb:9.0f}" if r.peak_mb is not None else f"{'-':>9}"
        lines.append(f"{r.impl:<10} {r.ratio:5.2f} {r.tokens:6d} {r.step_ms:9.1f} {r.images_per_s:9.1f} "
                     f"{r.tokens_per_s:11.0f} {r.tower_ms:9.1f} {r.activation_mb:9.1f} {peak} {r.gflops_per_image:10.2f}")
    get = {(r.impl, r.ratio): r for r in rows}
    j1, j5, j25 = (get[("juicer", x)] for x in RATIOS)
    tower_target = 1.9 if device.type == "cuda" else 2.0

    def check(label: str, value: float, ok: bool, target: str) -> str:
        return f"  {label:<58} {value:6.3f}  target {target:<10} {'ok' if ok else 'MISSED'}"

    speed = j1.tower_ms / j5.tower_ms
    lines += ["", "ratios (this run)", check("image tower speed-up r=0.5 vs r=1.0", speed, speed >= tower_target,
                                             f">= {tower_target}")]
    lines.append(check("image tower speed-up r=0.25 vs r=1.0 (paper 3.7x)", j1.tower_ms / j25.tower_ms, True, "-"))
    for ratio in RATIOS:
        if ("open_clip", ratio) in get:
            cost = get[("juicer", ratio)].step_ms / get[("open_clip", ratio)].step_ms
            lines.append(check(f"top-k step time / open_clip patch dropout, r={ratio:g}", cost, cost <= 1.05,
                               "<= 1.05"))
    if j1.peak_mb is not None:
        mem = j5.peak_mb / j1.peak_mb
        lines.append(check("peak memory r=0.5 / r=1.0", mem, mem <= 0.6, "<= 0.6"))
    act = j5.activation_mb / j1.activation_mb
    lines.append(check("activation memory r=0.5 / r=1.0", act, act <= 0.6, "<= 0.6"))
    for ratio, row in ((0.5, j5), (0.25, j25)):
        flops = row.gflops_per_image / j1.gflops_per_image
        paper = PAPER_FLOPS[ratio] / PAPER_FLOPS[1.0]
        lines.append(check(f"FLOPs r={ratio:g} / r=1.0 (paper {PAPER_FLOPS[ratio]}/13.2)", flops, flops <= paper,
                           f"<= {paper:.3f}"))
    return lines


def main() -> None:
    """Measure both implementations at every ratio and print the table and the target ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 16 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20 GPU / 3 CPU)")
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
    args.steps = args.steps or (20 if on_gpu else 3)
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
          f"compile {args.compile}, {num_patches} patches, {args.steps} timed steps after {args.warmup}")
    rows: list[Row] = []
    impls = (Juicer,) if args.no_reference else (Juicer, OpenClipDropout)
    for cls in impls:
        impl = cls(args.model, device, fused=device.type in ("cuda", "cpu"))
        flops = {ratio: tower_flops(impl, ratio, image, scores, autocast) for ratio in RATIOS}
        if args.compile:
            impl.model.visual.transformer = torch.compile(impl.model.visual.transformer)
            impl.model.transformer = torch.compile(impl.model.transformer)
        for ratio in RATIOS:
            rows.append(measure(impl, ratio, image, text, scores, args, device, autocast, flops[ratio]))
            print(f"  measured {impl.name} r={ratio:g}", flush=True)
        del impl
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    print("\n".join([""] + report(rows, device)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": str(device), "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
