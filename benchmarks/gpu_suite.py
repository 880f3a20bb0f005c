"""Every GPU check of issue 15 in one command, for a session that is lent an accelerator (~6-8 min on one H100/H200).

    python benchmarks/gpu_suite.py --out gpu_results            # then copy the printed block into docs/benchmarks.md

Sections (each runs even if an earlier one fails; the results so far are written to <out>/gpu_suite.json
after every section, so a run stopped at its time limit still returns what it measured):

1. sync   -- ``torch.cuda.set_sync_debug_mode("error")`` around Lightning training steps of a ViT-B/16
             JuicerCLIP (bf16, fused AdamW, non-finite guard on ``skip``, one poisoned batch, the throughput
             callback), and around the DataModule's transfer hook that selects top-k on the fly with a DINO
             ViT-S/16-shaped governor: any host-device sync on the step path raises.
2. decode -- nvjpeg (``torchvision.io.decode_jpeg`` on the device, batched) + resize + crop on the GPU vs
             the CPU decoder (PIL, draft) per core, on web-size JPEGs built from scikit-image's photographs.
3. pass   -- the precomputed vision pass end to end (DINO ViT-S/16 architecture, 224 px, bf16) on those
             JPEGs, JPEGs decoded on the GPU (``decode: gpu``, nvjpeg; the default ``auto`` on a GPU) and in
             the workers (``decode: cpu``): images/s from the manifest; target >= 4,000 images/s.
4. train  -- benchmarks/train_throughput.py (ViT-B/16, batch 128, bf16, 3 interleaved rounds): image tower
             r = 0.5 vs r = 1 >= 1.9x, peak memory <= 0.6x (whole step and tower alone).
5. online -- on-the-fly scoring (governor forward + top-k, batch 128) as a fraction of the r = 0.5 training
             step, interleaved, 5 rounds; target <= 10 %.

Check the script itself on a CPU before spending accelerator time on it (a few minutes on 2 cores; tiny
sizes, ViT-S/32, no sync-debug mode, the CPU's libjpeg-turbo standing in for nvjpeg; its figures mean
nothing):

    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu_smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS: dict[str, object] = {}
RESULTS_FILE: Path | None = None


class Setup:
    """What every section runs with: the real GPU sizes, or tiny ones on the CPU for ``--smoke``."""

    device = "cuda"
    model = "ViT-B-16"
    batch = 128
    pass_batch = 512
    decode_batch = 256
    cpu_images = 512
    steps = 8
    timed = 10
    rounds = 5

    @classmethod
    def smoke(cls) -> None:
        cls.device, cls.model, cls.batch, cls.pass_batch, cls.decode_batch = "cpu", "ViT-S-32", 8, 16, 16
        cls.cpu_images, cls.steps, cls.timed, cls.rounds = 16, 5, 1, 2

    @classmethod
    def cuda(cls) -> bool:
        return cls.device == "cuda"

    @classmethod
    def synchronize(cls) -> None:
        if cls.cuda():
            torch.cuda.synchronize()

    @classmethod
    def strict(cls, mode: str) -> None:
        """``torch.cuda.set_sync_debug_mode``; a no-op on the CPU (nothing to sync with there)."""
        if cls.cuda():
            torch.cuda.set_sync_debug_mode(mode)


def section(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n=== {name} ===", flush=True)
            start = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception as exn:  # noqa: BLE001 - report and go on with the next section
                traceback.print_exc()
                RESULTS[name] = {"error": repr(exn)}
            print(f"--- {name}: {RESULTS[name]} ({time.perf_counter() - start:.0f} s)", flush=True)
            if RESULTS_FILE is not None:
                RESULTS_FILE.write_text(json.dumps(RESULTS, indent=2, default=str))
        return run
    return wrap


@section("sync")
def sync_check(shards: list[str], tmp: Path, workers: int) -> dict:
    import lightning as L

    from lightning_juicer.callbacks import ImageThroughput
    from lightning_juicer.data import JuicerDataModule
    from lightning_juicer.governor.settings import GovernorConfig
    from lightning_juicer.models import JuicerCLIP

    class Strict(L.Callback):
        steps = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                batch["image"][0] = math.nan  # the guard must skip it on the device
            if batch_idx >= 1:
                Setup.strict("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            Setup.strict("default")
            self.steps += batch_idx >= 1

    dm = JuicerDataModule(train_shards=shards, batch_size=Setup.batch, num_workers=min(8, workers), selection="topk", scores="on_the_fly",
                          keep_ratio=0.5, governor=GovernorConfig(name="vit_small_patch16_224.dino", pretrained=False))
    module = JuicerCLIP(model_name=Setup.model, nonfinite_loss="skip", warmup_steps=2)
    strict = Strict()
    trainer = L.Trainer(max_steps=Setup.steps, accelerator="gpu" if Setup.cuda() else "cpu", devices=1,
                        precision="bf16-mixed" if Setup.cuda() else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        log_every_n_steps=1000, callbacks=[ImageThroughput(), strict], default_root_dir=tmp)
    trainer.fit(module, dm)  # the on-the-fly governor + top-k run inside the strict training steps
    return {"strict_steps": strict.steps, "governor_in_step": module.governor is not None,
            "nonfinite_loss_drops": module.drops["nonfinite_loss"]}


@section("decode")
def decode_check(images: list[bytes]) -> dict:
    from lightning_juicer.io.decode import decode_jpegs_on_device, draft_size, load_rgb
    from lightning_juicer.data.spec import DataSpec
    from torchvision.transforms.v2 import functional as F

    spec = DataSpec(image_size=224, patch_size=16, tokenizer=None)
    transform = spec.pixel_transform()  # what the training loader's workers run
    draft = draft_size(transform)
    torch.set_num_threads(1)
    start = time.perf_counter()
    for data in images[: Setup.cpu_images]:
        transform(load_rgb(data, draft))
    cpu = Setup.cpu_images / (time.perf_counter() - start)
    rates = []
    for _ in range(3):
        Setup.synchronize()
        start = time.perf_counter()
        for i in range(0, len(images), Setup.decode_batch):
            decoded = decode_jpegs_on_device(images[i : i + Setup.decode_batch], Setup.device)
            out = [F.center_crop(F.resize(img, 224, antialias=True), [224, 224]) for img in decoded]
            torch.stack(out)
        Setup.synchronize()
        rates.append(len(images) / (time.perf_counter() - start))
    return {"cpu_draft_decode_resize_per_core": round(cpu, 1), "gpu_nvjpeg_decode_resize": round(statistics.median(rates), 1),
            "gpu_rounds": [round(r, 1) for r in rates]}


@section("pass")
def pass_check(shards: list[str], tmp: Path, workers: int) -> dict:
    from lightning_juicer.passes import vision
    from lightning_juicer.passes.vision import run_vision_pass

    if not Setup.cuda():  # smoke: the CPU's decode_jpeg goes through the device-decode code (as in the tests)
        vision.gpu_decode = lambda choice, device: choice != "cpu"
    result: dict[str, object] = {"target": 4000}
    for decode in ("gpu", "cpu"):
        manifest = run_vision_pass({"shards": shards, "sidecar_dir": str(tmp / f"side_{decode}"), "decode": decode,
                                    "governor": {"name": "vit_small_patch16_224.dino", "pretrained": False},
                                    "batch_size": Setup.pass_batch, "num_workers": workers, "devices": 1, "progress": False})
        result[f"images_per_second_decode_{decode}"] = manifest["run"]["images_per_second"]
        result["images"] = manifest["totals"]["samples_written"]
        print(f"pass (decode {decode}): {manifest['run']['images_per_second']} images/s", flush=True)
    result["ok"] = max(result["images_per_second_decode_gpu"], result["images_per_second_decode_cpu"]) >= 4000
    return result


@section("train")
def train_check(out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).parent / "train_throughput.py"), "--model", Setup.model,
           "--batch-size", str(Setup.batch), "--steps", str(Setup.timed), "--warmup", "3" if Setup.cuda() else "1",
           "--rounds", "3" if Setup.cuda() else "1", "--device", Setup.device,
           "--json", str(out / "train_throughput_gpu.json")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout[-6000:], done.stderr[-3000:] if done.returncode else "")
    return {"returncode": done.returncode, "ratios": [l for l in done.stdout.splitlines() if "target" in l]}


@section("online")
def online_check() -> dict:
    from open_clip.loss import ClipLoss

    from lightning_juicer.governor.loading import load_governor
    from lightning_juicer.governor.online import OnlineSelector
    from lightning_juicer.models import JuicerCLIP

    device = torch.device(Setup.device)
    module = JuicerCLIP(model_name=Setup.model).to(device)
    spec = module.data_spec()
    selector = OnlineSelector(load_governor("vit_small_patch16_224.dino", pretrained=False), "topk", 0.5, spec.grid,
                              spec.mean, spec.std).to(device)  # placed by its holder; bf16 as the trainer's precision
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)
    loss_fn = ClipLoss()
    image = torch.randn(Setup.batch, 3, 224, 224, device=device)
    text = torch.randint(1, 49408, (Setup.batch, 77), device=device)

    def step(keep):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=Setup.cuda()):
            out = module({"image": image, "keep": keep, "text": text})
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn):
        fn()
        Setup.synchronize()
        start = time.perf_counter()
        for _ in range(Setup.timed):
            fn()
        Setup.synchronize()
        return (time.perf_counter() - start) / Setup.timed

    def score():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=Setup.cuda()):
            return selector(image)

    keep, _ = score()
    fractions = []
    for _ in range(Setup.rounds):
        score_s = timed(score)
        step_s = timed(lambda: step(keep))
        fractions.append(score_s / step_s)
    return {"scoring_over_step_median": round(statistics.median(fractions), 4),
            "min_max": [round(min(fractions), 4), round(max(fractions), 4)], "target": 0.10,
            "ok": statistics.median(fractions) <= 0.10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_results")
    parser.add_argument("--images", type=int, default=8192, help="web-size JPEGs for the decode and pass sections")
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--smoke", action="store_true",
                        help="check the script on the CPU: tiny sizes, ViT-S/32, figures meaningless")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sync", "decode", "pass", "train", "online"])
    args = parser.parse_args()
    if args.smoke:
        Setup.smoke()
        args.images, args.workers = min(args.images, 48), min(args.workers, 2)
    elif not torch.cuda.is_available():
        sys.exit("gpu_suite: no CUDA device here; every section needs one (--smoke checks the script on the CPU)")
    global RESULTS_FILE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE = out / "gpu_suite.json"
    tmp = Path(tempfile.mkdtemp())
    from concurrent.futures import ProcessPoolExecutor

    from decode_throughput import web_images, write_shards

    name = torch.cuda.get_device_name() if Setup.cuda() else "CPU (smoke check: figures meaningless)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    RESULTS["setup"] = {"device": name, "torch": torch.__version__, "smoke": args.smoke, "images": args.images,
                        "workers": args.workers, "model": Setup.model, "batch": Setup.batch}
    with ProcessPoolExecutor(args.workers) as pool:  # build the JPEGs in parallel (distinct seeds)
        parts = list(pool.map(web_images, [args.images // args.workers + 1] * args.workers, range(args.workers)))
    images = [d for part in parts for d in part][: args.images]
    shards = write_shards(images, tmp / "web", max(16 if args.smoke else 256, len(images) // (2 * args.workers)))
    print(f"{len(images)} web-size JPEGs in {len(shards)} shards", flush=True)
    if "sync" not in args.skip:
        sync_check(shards, tmp, args.workers)
    if "decode" not in args.skip:
        decode_check(images)
    if "pass" not in args.skip:
        pass_check(shards, tmp, args.workers)
    if "online" not in args.skip:
        online_check()
    if "train" not in args.skip:
        train_check(out)
    print("\n=== summary ===\n" + json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
