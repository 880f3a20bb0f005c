"""Training phases: full-patch tuning at the end, a killed run resumed with `fit --ckpt_path last`, NaN losses."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_juicer.callbacks import FullPatchPhase as RemovedFullPatchCallback
from lightning_juicer.callbacks import RunSummary
from lightning_juicer.data import JuicerDataModule
from lightning_juicer.errors import ConfigError
from lightning_juicer.models import JuicerCLIP
from lightning_juicer.models.guards import NonFiniteLossError
from lightning_juicer.optim import warmup_cosine
from lightning_juicer.models.phase import FullPatchPhase, phase_start
from tests.conftest import QUICKSTART, REPO

LR, WARMUP, MAX_STEPS, PHASE_STEPS, MULT = 2e-3, 4, 24, 8, 0.5
START = MAX_STEPS - PHASE_STEPS


class KillAtStep(L.Callback):
    """SIGKILLs its own process when the trainer reaches ``step`` (after the checkpoint of an earlier step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class Probe(L.Callback):
    """Writes what the resumed run starts from, and the kept-patch count each step trained on, to a JSON file."""

    def __init__(self, out: str) -> None:
        self.out, self.record = out, {"keep": {}}

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer, scheduler = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
        self.record.update(step=trainer.global_step, last_epoch=scheduler.last_epoch,
                           lrs=[g["lr"] for g in optimizer.param_groups],
                           logit_scale=pl_module.model.logit_scale.item(), exp_avg=exp_avg.flatten()[:16].tolist(),
                           adam_step=float(optimizer.state_dict()["state"][0]["step"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        keep = batch.get("keep")  # what the training step trained on (it writes it into the batch)
        self.record["keep"][str(trainer.global_step - 1)] = None if keep is None else keep.shape[1]

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps(self.record))


def run_cli(tmp_path: Path, synthetic_root: Path, extra_callback: dict, *extra: str) -> subprocess.CompletedProcess:
    """`python -m lightning_juicer fit` on the quickstart model with a checkpoint every 10 steps and the phase."""
    callbacks = {"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 10}},
        {"class_path": "lightning_juicer.callbacks.RunSummary"},
        extra_callback,
    ]}}
    override = tmp_path / "callbacks.yaml"
    override.write_text(yaml.safe_dump(callbacks))
    command = [
        sys.executable, "-m", "lightning_juicer", "fit", "--config", str(QUICKSTART), "--config", str(override),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.max_steps", str(MAX_STEPS), "--trainer.val_check_interval", "null",
        "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.synthetic.root", str(synthetic_root), "--data.init_args.batch_size", "16",
        "--data.init_args.num_workers", "1", "--model.init_args.lr", str(LR),
        "--model.init_args.warmup_steps", str(WARMUP), "--model.init_args.full_patch_steps", str(PHASE_STEPS),
        "--model.init_args.full_patch_lr_multiplier", str(MULT), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_killed_run_resumes_inside_the_full_patch_phase(tmp_path, tiny_synthetic):
    killed = run_cli(tmp_path, tiny_synthetic.root,
                     {"class_path": "tests.test_phases.KillAtStep", "init_args": {"step": 22}})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    log_dir = tmp_path / "quickstart" / "version_0"
    last = log_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 20  # saved at step 20, killed at 22
    # The switch is announced once, on the console and in TensorBoard, at step 16 = 24 - 8.
    assert killed.stderr.count(f"switching to all patches at step {START}") == 1
    values = scalars(log_dir)
    assert values["train/full_patch_phase_start"] == {START: float(START)}
    phase = values["train/full_patch_phase"]
    assert [phase[s] for s in range(START - 2, START + 2)] == [0.0, 0.0, 1.0, 1.0]
    # The phase's lr multiplier composes with warm-up + cosine (LearningRateMonitor logs the lr of each step).
    factor = warmup_cosine(WARMUP, MAX_STEPS)
    lr = values["lr-AdamW/pg1"]
    assert lr[START - 1] == pytest.approx(LR * factor(START - 1), rel=1e-5)
    assert lr[START + 1] == pytest.approx(LR * factor(START + 1) * MULT, rel=1e-5)

    resumed = run_cli(tmp_path, tiny_synthetic.root,
                      {"class_path": "tests.test_phases.Probe", "init_args": {"out": str(tmp_path / "probe.json")}},
                      "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 20, inside the phase (it began at step 16)" in resumed.stderr
    assert "switching to all patches" not in resumed.stderr  # announced once per run, not again on resume
    probe = json.loads((tmp_path / "probe.json").read_text())
    # Step, scheduler, optimizer state and logit scale are the checkpoint's.
    assert probe["step"] == 20 and probe["last_epoch"] == 20
    optimizer = checkpoint["optimizer_states"][0]
    assert probe["adam_step"] == float(optimizer["state"][0]["step"]) == 20.0
    assert probe["exp_avg"] == pytest.approx(optimizer["state"][0]["exp_avg"].flatten()[:16].tolist())
    assert probe["lrs"] == pytest.approx([LR * factor(20) * MULT] * 2, rel=1e-6)
    assert probe["logit_scale"] == pytest.approx(checkpoint["state_dict"]["model.logit_scale"].item())
    # Still in the phase: every batch after resume sees all patches.
    assert probe["keep"] == {str(s): None for s in range(20, 24)}
    # Same log folder (no version_1), and the run reached its end.
    assert not (tmp_path / "quickstart" / "version_1").exists()
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == MAX_STEPS
    resumed_lr = scalars(log_dir)["lr-AdamW/pg1"]
    assert resumed_lr[22] == pytest.approx(LR * factor(22) * MULT, rel=1e-5)
    # Steps 20 and 21 were logged before the kill and again after the resume: TensorBoard must see each once.
    assert logged_steps_read_as_tensorboard_does(log_dir, "train/loss") == list(range(MAX_STEPS))


def logged_steps_read_as_tensorboard_does(log_dir: Path, tag: str) -> list[int]:
    """Steps of ``tag`` in the raw event files, in order, applying TensorBoard's rule that a
    ``SessionLog.START`` at step s discards the earlier events at steps >= s (what ``purge_step`` writes)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    steps: list[int] = []
    for path in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_phase_boundary_and_config_errors():
    assert phase_start(1000, None, 0.08) == 920
    assert phase_start(1000, 20, None) == 980
    assert phase_start(10, 50, None) == 0
    with pytest.raises(ConfigError, match=r"model.init_args.full_patch_steps / model.init_args.full_patch_fraction: give exactly one"):
        FullPatchPhase()
    with pytest.raises(ConfigError, match=r"full_patch_fraction: give exactly one"):
        FullPatchPhase(steps=3, fraction=0.1)
    with pytest.raises(ConfigError, match=r"init_args.full_patch_fraction: 1.5"):
        FullPatchPhase(fraction=1.5)
    with pytest.raises(ConfigError, match=r"init_args.full_patch_lr_multiplier"):
        FullPatchPhase(steps=3, lr_multiplier=0.0)
    with pytest.raises(ConfigError, match=r"init_args.full_patch_lr_multiplier: set .*full_patch_steps"):
        JuicerCLIP(model_name="ViT-B-16", full_patch_lr_multiplier=0.5)
    # A config still naming the old callback is told where the phase went.
    with pytest.raises(ConfigError, match=r"FullPatchPhase\]: .*model.init_args.full_patch_steps 8 and "
                                          r"model.init_args.full_patch_lr_multiplier 0.5"):
        RemovedFullPatchCallback(steps=8, lr_multiplier=0.5)


class PoisonAt(L.Callback):
    """Puts a NaN into the images of the batches at the given steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.keys = steps, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps:
            batch["image"][0] = math.nan
            self.keys[trainer.global_step] = list(batch["key"])


def tiny_fit(tmp_path, synthetic, model_args, policy, poison, steps=6):
    module = JuicerCLIP(**{**model_args, "nonfinite_loss": policy, "warmup_steps": 2})
    dm = JuicerDataModule(train_shards=synthetic.train_shards, batch_size=8, num_workers=0, shuffle_buffer=0,
                          selection="random", keep_ratio=0.5)
    trainer = L.Trainer(max_steps=steps, logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, callbacks=[poison, RunSummary()],
                        enable_model_summary=False)
    return module, dm, trainer


def test_nonfinite_loss_stops_naming_step_and_keys(tmp_path, tiny_synthetic, tiny_model_args):
    poison = PoisonAt({3})
    module, dm, trainer = tiny_fit(tmp_path, tiny_synthetic, tiny_model_args, "raise", poison)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*nonfinite_loss skip") as info:
        trainer.fit(module, dm)
    assert all(key in str(info.value) for key in poison.keys[3])


def test_nonfinite_loss_skip_counts_and_keeps_weights_finite(tmp_path, tiny_synthetic, tiny_model_args):
    poison = PoisonAt({1, 3})
    module, dm, trainer = tiny_fit(tmp_path, tiny_synthetic, tiny_model_args, "skip", poison)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, dm)
    assert trainer.global_step == 6
    assert module.drops["nonfinite_loss"] == 16  # two batches of 8 (counted by the module, not written into dm)
    assert "nonfinite_loss" not in dm.drops
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dropped"] == {"nonfinite_loss": 16}


def test_nonfinite_policy_is_checked():
    with pytest.raises(ConfigError, match=r"model.init_args.nonfinite_loss: 'ignore'"):
        JuicerCLIP(model_name="ViT-B-16", nonfinite_loss="ignore")


def test_last_ckpt_is_the_final_state_and_redirected_logs_get_progress_lines(tmp_path, tiny_synthetic,
                                                                             tiny_model_args, capsys):
    # every_n_train_steps=4 of 6 with validation configured: Lightning alone leaves last.ckpt at step 4.
    module = JuicerCLIP(**{**tiny_model_args, "warmup_steps": 1})
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, val_shards=tiny_synthetic.val_shards, batch_size=8,
                          num_workers=0, shuffle_buffer=0, selection="random", keep_ratio=0.5)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
    trainer = L.Trainer(max_steps=6, logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                        limit_val_batches=1, enable_model_summary=False,
                        callbacks=[checkpoint, RunSummary(progress_every_n_steps=2)])
    trainer.fit(module, dm)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
    out = capsys.readouterr().out  # pytest's captured stderr is not a terminal, like a redirected log
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["2/6", "4/6", "6/6"]
