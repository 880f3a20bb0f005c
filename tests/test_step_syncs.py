"""The training step path reads nothing back from the device: no .item() / .cpu() / bool(tensor) / .tolist().

On a GPU each of these waits for the queue to drain. The test patches them on ``torch.Tensor`` while a
tiny model trains a few steps on the CPU (on-the-fly top-k by the shipped governor, the non-finite
guard, the throughput callback, logging) and asserts that none is called from the step path: the
transfer hook, the governor's selection, forward, loss, backward, the optimizer step and the batch-end
hooks. Calls made while the DataLoader produces a batch (decoding, collation) are not the step path
and are ignored. On a GPU, benchmarks/gpu_suite.py checks the same with
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import math
import traceback

import lightning as L
import pytest
import torch

from lightning_juicer.callbacks import ImageThroughput, RunSummary
from lightning_juicer.data import JuicerDataModule
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.models import JuicerCLIP

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class SyncSpy(L.Callback):
    """Patches the host reads of torch.Tensor from the end of batch ``start`` to the end of batch ``stop``."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.calls: list[str] = []
        self.saved: dict[str, object] = {}

    def _install(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self.saved[name] = original

            def spy(tensor, *args, _name=name, _original=original, **kwargs):
                stack = traceback.extract_stack()[:-1]
                if not any("torch/utils/data/" in frame.filename for frame in stack):
                    where = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stack[-4:]]
                    self.calls.append(f"Tensor.{_name} from {' <- '.join(reversed(where))}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, spy)

    def _remove(self) -> None:
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)
        self.saved.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.start:
            self._install()
        elif batch_idx == self.stop:
            self._remove()

    def on_train_end(self, trainer, pl_module) -> None:
        self._remove()


class PoisonAt(L.Callback):
    """A NaN in the first image of the batch at ``step`` (the skip must happen on the device)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["image"][0] = math.nan


def test_training_steps_make_no_host_reads(tmp_path, tiny_synthetic, tiny_model_args):
    torch.manual_seed(0)
    module = JuicerCLIP(**{**tiny_model_args, "nonfinite_loss": "skip", "nonfinite_check_every": 100})
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, batch_size=8, num_workers=0, shuffle_buffer=0,
                          selection="topk", scores="on_the_fly", keep_ratio=0.5,
                          governor=GovernorConfig(name="juicer-synthetic"))
    spy = SyncSpy(start=1, stop=5)
    poison = PoisonAt(3)
    throughput = ImageThroughput(window_size=2, every_n_steps=2)  # logs (host numbers only) inside the spied steps
    trainer = L.Trainer(max_steps=7, default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False, log_every_n_steps=50,
                        callbacks=[throughput, RunSummary(), poison, spy])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, dm)
    assert not spy.saved, "the spy must have been removed"
    assert spy.calls == [], "host reads on the training step path:\n" + "\n".join(spy.calls)
    # the spy was live: the steps ran, the weights moved and stayed finite
    assert trainer.global_step == 7
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    # the poisoned step was skipped on the device and counted at the end-of-training check
    assert module.drops["nonfinite_loss"] == 8
    # the throughput callback still measures: images/s and image tokens/s (CLS + 32 of 64 patches)
    rates = throughput.throughput.compute()
    assert rates["samples"] == 48 and rates["device/samples_per_sec"] > 0
    assert rates["device/items_per_sec"] == pytest.approx(33 * rates["device/samples_per_sec"])


def test_the_spy_sees_a_host_read_in_a_training_step(tmp_path, tiny_synthetic, tiny_model_args):
    """The spy is not blind: a training_step that reads the loss is reported."""

    class Reading(JuicerCLIP):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.seen = loss.item()
            return loss

    module = Reading(**tiny_model_args)
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, batch_size=8, num_workers=0, shuffle_buffer=0,
                          selection="random", keep_ratio=0.5)
    spy = SyncSpy(start=0, stop=2)
    trainer = L.Trainer(max_steps=3, logger=False, default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False, callbacks=[spy])
    trainer.fit(module, dm)
    assert len([c for c in spy.calls if "Tensor.item" in c and "test_step_syncs.py" in c]) == 2
