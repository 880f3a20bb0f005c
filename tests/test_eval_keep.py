"""Evaluation at keep ratio r < 1 with a strategy (paper Tab. 4): governor top-k / stratified kept patches."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_juicer.callbacks import RetrievalEvaluation, ZeroShotEvaluation
from lightning_juicer.cli import main
from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.common import ScoreKeep, eval_loader
from lightning_juicer.evaluation.datasets import KarpathyRetrieval
from lightning_juicer.evaluation.retrieval import evaluate_retrieval
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.online import OnlineSelector
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import select_topk
from lightning_juicer.models.module import JuicerCLIP
from tests.conftest import QUICKSTART

GRID, MEAN, STD = (8, 8), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = SyntheticConfig(root=str(tmp_path_factory.mktemp("evalkeep") / "data"), num_train=32, samples_per_shard=32,
                          num_val=16, eval_per_class=2, num_retrieval=12)
    return cfg, prepare_synthetic(cfg)


@pytest.fixture(scope="module")
def scorer():
    return load_governor("juicer-synthetic")


@pytest.fixture(scope="module")
def model(tiny_model_args):
    torch.manual_seed(0)
    return JuicerCLIP(**tiny_model_args).eval()


def test_score_keep_is_the_governors_topk_and_stratified_is_batch_independent(data, scorer, model):
    _, paths = data
    dataset = KarpathyRetrieval(paths.retrieval_json, paths.retrieval_images, model.data_spec().image_transform())
    batch = next(iter(eval_loader(dataset, 64, 12, 0)))
    topk = ScoreKeep(OnlineSelector(scorer, "topk", 0.25, GRID, MEAN, STD), 64)
    kept = topk(batch["index"], batch["image"])
    scores = topk.selector.scores(batch["image"])
    assert kept.shape == (12, 16) and torch.equal(kept, select_topk(scores, 16))
    # The kept patches score higher than the rest (the governor's choice, not random).
    assert (scores.gather(1, kept).mean(1) > scores.mean(1)).all()
    strat = ScoreKeep(OnlineSelector(scorer, "stratified", 0.25, GRID, MEAN, STD), 64, seed=3)
    whole = strat(batch["index"], batch["image"])
    halves = torch.cat([strat(batch["index"][i:i + 6], batch["image"][i:i + 6]) for i in (0, 6)])
    assert torch.equal(whole, halves) and not torch.equal(whole, kept)
    assert topk.fallbacks == strat.fallbacks == 0
    # Through the evaluation: same figures whatever the batch size.
    runs = [evaluate_retrieval(model, eval_loader(dataset, 64, b, 0), torch.device("cpu"), strat) for b in (5, 12)]
    assert runs[0].metrics == runs[1].metrics


def test_validate_evaluates_at_r_below_one_with_topk(data, model, tmp_path):
    cfg, _ = data
    seen: list[torch.Tensor | None] = []
    encode = model.encode_image
    model.encode_image = lambda image, keep=None, normalize=True: seen.append(keep) or encode(image, keep, normalize)
    callbacks = [
        ZeroShotEvaluation(name="zs", templates="photo", batch_size=8, num_workers=0),
        RetrievalEvaluation(name="ret", batch_size=6, num_workers=0, keep_ratio=0.5, selection="topk"),
    ]
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"), callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    try:
        trainer.validate(model, JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0))
    finally:
        del model.encode_image
    records = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    zs = [r for r in records if r["dataset"] == "zs"]
    ret = [r for r in records if r["dataset"] == "ret"]
    assert {(r["keep_ratio"], r["selection"]) for r in zs} == {(1.0, "full")}
    assert {(r["keep_ratio"], r["selection"], r["governor"], r["random_fallbacks"]) for r in ret} == {
        (0.5, "topk", "juicer-synthetic", 0)}
    # Zero-shot encoded full images (24 images); retrieval 12 images at k = 32 of 64, by the governor.
    assert [k for k in seen if k is not None] and all(k.shape[1] == 32 for k in seen if k is not None)
    assert sum(len(k) for k in seen if k is not None) == 12
    assert seen.count(None) == 3  # 24 zero-shot images in batches of 8 (the val loss goes through forward)


def test_unknown_eval_selection_is_a_config_error():
    with pytest.raises(ConfigError, match=r"RetrievalEvaluation\]\.init_args\.selection: 'best'"):
        RetrievalEvaluation(selection="best")


def test_eval_config_with_a_governor_parses(tmp_path):
    extra = tmp_path / "eval_r050.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning_juicer.callbacks.ZeroShotEvaluation\n"
        "      init_args: {name: zs_r050, keep_ratio: 0.5, selection: topk, governor: {name: juicer-synthetic}}\n"
    )
    cli = main(["--config", str(QUICKSTART), "--config", str(extra)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ZeroShotEvaluation)]
    assert (callback.keep_ratio, callback.selection) == (0.5, "topk")
    assert callback.governor == GovernorConfig("juicer-synthetic")
