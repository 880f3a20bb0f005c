"""What the evaluation callbacks share (``EvaluationCallback``): scheduling, sharding over ranks, logging, results.

The callbacks themselves: ``callbacks/zeroshot.py`` (``ZeroShotEvaluation``) and ``callbacks/retrieval.py``
(``RetrievalEvaluation``); each subclass names its dataset, its evaluation and its metric names.

One callback instance evaluates one dataset; list several for several datasets. Each evaluation
is sharded over ranks and gathered, so every rank logs the same ``eval/<name>/<metric>`` values
(ModelCheckpoint can monitor them), appends records to ``<log_dir>/results.json`` and prints a
compact table on rank 0.

When it runs:

- ``fit``: every ``every_n_steps`` optimizer steps (0 = never) in ``on_train_batch_end``, and once
  more at the end of training (``at_fit_end``) unless the last step was just evaluated. The
  end-of-fit run happens in ``on_train_end``, while the model is still on its device.
- ``validate`` / ``test``: once, in ``on_validation_epoch_end`` / ``on_test_epoch_end`` (after the
  DataModule's own val/test batches, if any), logged through ``pl_module.log`` so the figures also
  appear in Lightning's result table and in the dicts ``trainer.validate`` returns.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset

from lightning_juicer.synthetic import synthetic_paths
from lightning_juicer.errors import ConfigError
from lightning_juicer.io.atomic import atomic_write_text
from lightning_juicer.evaluation.common import SampleKeep, ScoreKeep, eval_loader, eval_mode
from lightning_juicer.evaluation.zeroshot import EvalResult
from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.governor.online import OnlineSelector
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import SelectionStrategy, build_strategy

RESULTS_FILE = "results.json"


def append_results(path: str | Path, records: Sequence[dict]) -> None:
    """Append records to a JSON list file, written atomically (a corrupt file is kept aside as ``.bad``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing: list = []
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(existing, list):
                raise ValueError("not a list")
        except ValueError:
            os.replace(path, path.with_suffix(".json.bad"))
            rank_zero_warn(f"{path} was not a JSON list; moved it to {path.with_suffix('.json.bad')}")
            existing = []
    atomic_write_text(path, json.dumps(existing + list(records), indent=2) + "\n")


def checkpoint_step(path: str | Path | None) -> int | None:
    """``global_step`` stored in a local Lightning checkpoint (memory-mapped, weights not read); None if unknown."""
    if not path or not Path(path).is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 - the step is informative only
        return None


def format_table(title: str, rows: Sequence[tuple[str, float]]) -> str:
    """A compact two-column table of named percentages."""
    width = max(len(name) for name, _ in rows)
    lines = [title] + [f"  {name:<{width}}  {100 * value:6.2f}" for name, value in rows]
    return "\n".join(lines)


class EvaluationCallback(L.Callback):
    """Scheduling, sharding, logging and results files shared by the evaluation callbacks."""

    task = ""

    def __init__(self, name: str, title: str | None, every_n_steps: int, at_fit_end: bool, batch_size: int,
                 num_workers: int, keep_ratio: float, selection: str | SelectionStrategy, seed: int,
                 governor: GovernorConfig | None = None) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ConfigError(f"{self._key('every_n_steps')}: {every_n_steps} must be >= 0 (0 = off)")
        if batch_size < 1:
            raise ConfigError(f"{self._key('batch_size')}: {batch_size} must be >= 1")
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"{self._key('keep_ratio')}: {keep_ratio} is outside (0, 1]")
        self.strategy = build_strategy(selection, self._key("selection"))
        self.name = name
        self.title = title or name
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.keep_ratio = keep_ratio
        self.selection = selection
        self.seed = seed
        self.governor = governor
        self.selector: OnlineSelector | None = None
        self.dataset: Dataset | None = None
        self.last_result: EvalResult | None = None
        self._last_step: int | None = None
        self._ran = False
        self._ckpt_step: tuple[str | None, int | None] = (None, None)

    @property
    def state_key(self) -> str:
        """Distinct per instance, so several evaluation callbacks can sit in one trainer."""
        return self._generate_state_key(name=self.name)

    def _key(self, arg: str) -> str:
        return f"trainer.callbacks[{type(self).__name__}].init_args.{arg}"

    def _synthetic(self, trainer: L.Trainer, arg: str):
        datamodule = trainer.datamodule
        if not getattr(datamodule, "uses_synthetic", False):
            raise ConfigError(f"{self._key(arg)}: required (the DataModule does not train on the synthetic set, "
                              "so there is no synthetic evaluation set to default to)")
        return synthetic_paths(datamodule.synthetic.root)

    def build_dataset(self, trainer: L.Trainer, transform: Any) -> Dataset:
        """The evaluation set; raises ConfigError naming the key for a missing or inconsistent one."""
        raise NotImplementedError

    def evaluate(self, pl_module: L.LightningModule, loader, keep: SampleKeep, trainer: L.Trainer) -> EvalResult:
        """Metrics of the model on the loader (this rank's share), gathered over ranks."""
        raise NotImplementedError

    def display_names(self) -> dict[str, str]:
        """Metric key -> name in the console table, as papers name them."""
        raise NotImplementedError

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check and open the evaluation set (after ``prepare_data``, so freshly generated data is there)."""
        self._ran = False
        if stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING, TrainerFn.TESTING):
            return
        self.spec = pl_module.data_spec()
        self.dataset = self.build_dataset(trainer, self.spec.image_transform())

    def _score_selector(self, trainer: L.Trainer) -> OnlineSelector:
        """The governor selector for a strategy that needs scores or features: ``governor``, else the training one (sharing the model's loaded governor)."""
        datamodule, module = trainer.datamodule, trainer.lightning_module
        train_governor = datamodule.governor if isinstance(datamodule, JuicerDataModule) else None
        governor = self.governor or train_governor or GovernorConfig()
        online = module.online_selector if isinstance(module, JuicerCLIP) else None
        if online is not None and train_governor == governor:
            scorer = online.scorer
        else:
            scorer = load_governor(governor.name, governor.pretrained)
        self.governor = governor
        spec = self.spec
        return OnlineSelector(scorer, self.strategy, self.keep_ratio, spec.grid, spec.mean, spec.std)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> EvalResult:
        """Evaluate now on every rank (model in eval mode, no grad, modes restored); the same result on all ranks."""
        start = time.perf_counter()
        loader = eval_loader(self.dataset, self.spec.image_size, self.batch_size, self.num_workers,
                             trainer.global_rank, trainer.world_size)
        if self.strategy.needs != "nothing" and not self.strategy.keeps_all(self.keep_ratio) and self.selector is None:
            self.selector = self._score_selector(trainer)  # here, not in setup: the model builds its governor after us
        if self.selector is not None:
            keep = ScoreKeep(self.selector.to(pl_module.device), self.spec.num_patches, self.seed)
        else:
            keep = SampleKeep(self.strategy, self.spec.num_patches, self.keep_ratio, self.seed)
        with eval_mode(pl_module):
            result = self.evaluate(pl_module, loader, keep, trainer)
        if self.selector is not None:
            fallbacks = trainer.strategy.reduce(torch.tensor(float(keep.fallbacks), device=pl_module.device),
                                                reduce_op="sum")
            result.extra.update(governor=self.governor.name, random_fallbacks=int(fallbacks))
        result = trainer.strategy.broadcast(result, src=0)
        result.extra["seconds"] = round(time.perf_counter() - start, 3)
        self.last_result, self._last_step, self._ran = result, trainer.global_step, True
        return result

    def step(self, trainer: L.Trainer) -> int:
        """Training step the evaluated weights come from (a validate/test checkpoint's, else the trainer's)."""
        if trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and trainer.ckpt_path:
            if self._ckpt_step[0] != trainer.ckpt_path:
                self._ckpt_step = (trainer.ckpt_path, checkpoint_step(trainer.ckpt_path))
            if self._ckpt_step[1] is not None:
                return self._ckpt_step[1]
        return trainer.global_step

    def _metrics(self, result: EvalResult) -> dict[str, float]:
        out = {f"eval/{self.name}/{k}": v for k, v in result.metrics.items()}
        out[f"eval/{self.name}/skipped"] = float(result.skipped)
        return out

    def _publish(self, trainer: L.Trainer, pl_module: L.LightningModule, result: EvalResult, how: str) -> None:
        metrics = self._metrics(result)
        if how == "epoch":
            for key, value in metrics.items():
                pl_module.log(key, value, sync_dist=True, batch_size=1)
        else:
            if how == "step":
                for key, value in metrics.items():
                    pl_module.log(key, value, on_step=True, on_epoch=False, logger=False, batch_size=1)
            else:
                trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # trainer.log_dir is a collective: all ranks
        if trainer.is_global_zero:
            self._write(trainer, result, log_dir)

    def records(self, trainer: L.Trainer, result: EvalResult) -> list[dict]:
        """results.json records of one evaluation, one per metric."""
        stage = str(trainer.state.fn.value) if trainer.state.fn else None
        checkpoint = trainer.ckpt_path if stage in ("validate", "test") else None
        names = self.display_names()
        common = {
            "dataset": self.name, "task": self.task, "step": self.step(trainer), "epoch": trainer.current_epoch,
            "stage": stage, "checkpoint": str(checkpoint) if checkpoint else None, "keep_ratio": self.keep_ratio,
            "selection": "full" if self.strategy.keeps_all(self.keep_ratio) else self.strategy.name,
            "num_samples": result.num_samples, "skipped": result.skipped, **result.extra,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return [{"metric": k, "name": names.get(k, k), "value": v, **common} for k, v in result.metrics.items()]

    def _write(self, trainer: L.Trainer, result: EvalResult, log_dir: Path) -> None:
        append_results(log_dir / RESULTS_FILE, self.records(trainer, result))
        names = self.display_names()
        head = (f"{self.title} (%): step {self.step(trainer)}, keep ratio {self.keep_ratio:g}, "
                f"{result.num_samples} images, {result.skipped} skipped, {result.extra['seconds']:.1f}s")
        table = format_table(head, [(names.get(k, k), v) for k, v in result.metrics.items()])
        bar = trainer.progress_bar_callback
        if bar is not None:
            bar.print(table)
        else:
            rank_zero_info(table)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Evaluate every ``every_n_steps`` optimizer steps."""
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._publish(trainer, pl_module, self.run(trainer, pl_module), "step")

    def on_train_end(self, trainer, pl_module) -> None:
        """Evaluate the final weights, unless that step was just evaluated."""
        if self.at_fit_end and trainer.global_step != self._last_step:
            self._publish(trainer, pl_module, self.run(trainer, pl_module), "end")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """``validate``: evaluate once after the DataModule's validation batches."""
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._publish(trainer, pl_module, self.run(trainer, pl_module), "epoch")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        """``test``: evaluate once after the DataModule's test batches."""
        if trainer.state.fn == TrainerFn.TESTING:
            self._publish(trainer, pl_module, self.run(trainer, pl_module), "epoch")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Say so when validate/test ended without evaluating (no val/test batches ran)."""
        if stage in (TrainerFn.VALIDATING, TrainerFn.TESTING) and not self._ran:
            rank_zero_warn(
                f"{type(self).__name__}({self.name}) did not run: the {stage} loop had no batches "
                "(check limit_val_batches / limit_test_batches and the DataModule's val data)"
            )
