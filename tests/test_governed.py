"""The on-the-fly governor is a frozen part of the LightningModule: placed and cast by Lightning, run under the
trainer's precision, outside checkpoints and the optimizer; and nothing writes into the DataModule during a fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from lightning_juicer.callbacks import RunSummary
from lightning_juicer.data import JuicerDataModule
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.models import JuicerCLIP, governed
from lightning_juicer.optim import warmup_cosine


class InterfaceSelector(nn.Module):
    """The on-the-fly selector's interface (``OnlineSelector(scorer, strategy, keep_ratio, student_grid, mean, std)``,
    ``forward(images) -> (keep, fallbacks)``, no device moves or autocast of its own), recording how it was run."""

    calls: list[dict] = []

    def __init__(self, scorer, strategy, keep_ratio, student_grid, mean, std) -> None:
        super().__init__()
        self.scorer, self.mean, self.std = scorer, mean, std
        self.k = round(keep_ratio * student_grid[0] * student_grid[1])

    def forward(self, images: torch.Tensor):
        param = next(self.scorer.parameters())
        self.scorer(self.scorer.prepare(images.to(param.dtype), self.mean, self.std))
        kind = images.device.type
        InterfaceSelector.calls.append({
            "autocast": torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind),
            "param_dtype": param.dtype, "device": param.device, "training": self.training,
            "grad": torch.is_grad_enabled(),
        })
        keep = torch.arange(self.k, device=images.device).expand(images.shape[0], -1)
        return keep, torch.zeros((), dtype=torch.long, device=images.device)


def on_the_fly_data(synthetic) -> JuicerDataModule:
    return JuicerDataModule(train_shards=synthetic.train_shards, batch_size=8, num_workers=0, shuffle_buffer=0,
                            selection="topk", scores="on_the_fly", keep_ratio=0.5,
                            governor=GovernorConfig(name="juicer-synthetic"))


@pytest.mark.parametrize("precision, autocast, param_dtype", [
    ("32-true", False, torch.float32), ("bf16-mixed", torch.bfloat16, torch.float32),
    ("bf16-true", False, torch.bfloat16),
])
def test_the_governor_runs_under_the_trainers_precision_outside_checkpoint_and_optimizer(
        monkeypatch, tmp_path, tiny_synthetic, tiny_model_args, precision, autocast, param_dtype):
    monkeypatch.setattr(governed, "OnlineSelector", InterfaceSelector)
    InterfaceSelector.calls = []
    module = JuicerCLIP(**{**tiny_model_args, "warmup_steps": 1})
    trainer = L.Trainer(max_steps=2, precision=precision, logger=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False)
    trainer.fit(module, on_the_fly_data(tiny_synthetic))

    # Run in the training step under the trainer's precision (autocast for -mixed, cast weights for -true),
    # frozen and in eval mode while the model trains.
    assert [c["autocast"] for c in InterfaceSelector.calls] == [autocast] * 2
    assert all(c["param_dtype"] == param_dtype and not c["training"] and not c["grad"] for c in InterfaceSelector.calls)
    governor_params = list(module.governor.parameters())
    assert governor_params and not any(p.requires_grad for p in governor_params)
    assert module.training and not module.governor.training and not module.online_selector.training
    # Not in the optimizer, not in the state dict or the checkpoint.
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert in_optimizer and not in_optimizer & {id(p) for p in governor_params}
    assert not any(key.startswith("governor.") for key in module.state_dict())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", map_location="cpu", weights_only=True)
    assert not any("governor" in key for key in checkpoint["state_dict"])
    assert checkpoint["state_dict"].keys() == JuicerCLIP(**tiny_model_args).state_dict().keys()
    # Strict loads work both ways: into a module with a governor and into one without (old and new checkpoints).
    module.load_state_dict(checkpoint["state_dict"])
    JuicerCLIP(**tiny_model_args).load_state_dict(checkpoint["state_dict"])


class Record(L.Callback):
    """The keep each step trained on, the steps the governor ran at, a NaN image at step ``poison``."""

    def __init__(self, poison: int) -> None:
        self.poison, self.keeps, self.governor_steps = poison, [], []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.governor.register_forward_hook(lambda *_: self.governor_steps.append(trainer.global_step))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.poison:
            batch["image"][0] = math.nan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.keeps.append(None if batch["keep"] is None else tuple(batch["keep"].shape))


def test_nothing_writes_into_the_datamodule_during_a_fit(tmp_path, tiny_synthetic, tiny_model_args):
    module = JuicerCLIP(**{**tiny_model_args, "warmup_steps": 1, "nonfinite_loss": "skip", "full_patch_steps": 2,
                           "full_patch_lr_multiplier": 0.5})
    dm = on_the_fly_data(tiny_synthetic)
    dm.data_spec = module.data_spec()
    dm.setup("fit")  # what the DataModule sets itself (shard lists, sample counts) is its own
    before = dict(vars(dm))
    record = Record(poison=1)
    trainer = L.Trainer(max_steps=6, logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                        callbacks=[record, RunSummary()])
    trainer.fit(module, dm)

    after = vars(dm)
    assert after.keys() == before.keys()
    assert {k for k in before if after[k] is not before[k]} <= {"trainer"}  # Lightning's own back-reference
    assert after["drops"] is before["drops"] and "nonfinite_loss" not in dm.drops
    # The model counted the skipped batch, ran the governor until the phase and trained on all patches in it.
    assert module.drops["nonfinite_loss"] == 8
    assert record.governor_steps == [0, 1, 2, 3]
    assert record.keeps == [(8, 32)] * 4 + [None] * 2
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    expected = warmup_cosine(1, 6)
    assert [factor(s) for s in range(6)] == pytest.approx([expected(s) * (0.5 if s >= 4 else 1.0) for s in range(6)])
    manifest = (tmp_path / "manifest.json").read_text()
    assert '"nonfinite_loss": 8' in manifest
