"""The shipped offline governor: size, metadata and the quality gate (issue 3, point 6)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from lightning_juicer.synthetic import SHAPE_CLASSES
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.loading import governor_activation, load_governor
from lightning_juicer.governor.quality import OBJECT_PATCH_THRESHOLD, governor_quality, render_scenes
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.governor.training import (
    ACTIVATION,
    SYNTHETIC_GOVERNOR,
    GovernorTrainConfig,
    build_governor,
    forward_with_scores,
    save_governor,
    train_governor,
)

MAX_ASSET_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    scorer = load_governor(str(SYNTHETIC_GOVERNOR))
    return scorer, ClassHead.from_model(scorer, activation=governor_activation(scorer))


def test_asset_folder_is_small():
    files = [f for f in SYNTHETIC_GOVERNOR.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"config.json", "model.safetensors"}
    assert sum(f.stat().st_size for f in files) <= MAX_ASSET_BYTES


def test_shipped_metadata(shipped):
    scorer, head = shipped
    assert scorer.image_size == (64, 64) and scorer.patch_size == (8, 8) and scorer.num_patches == 64
    assert scorer.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert scorer.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert head.classnames == list(SHAPE_CLASSES)
    assert head.activation == ACTIVATION == "sigmoid"
    config = json.loads((SYNTHETIC_GOVERNOR / "config.json").read_text())
    assert config["label_names"] == list(SHAPE_CLASSES)
    assert config["activation"] == "sigmoid"


def test_quality_gate(shipped):
    scorer, head = shipped
    q = governor_quality(scorer, head, num_images=200, seed=0, keep_ratio=0.5)
    assert q["coverage_topk"] >= 0.90, q
    assert 0.45 <= q["coverage_random"] <= 0.55, q
    assert q["evidence_classes"] >= 100, q  # the head does speak up, on most images
    assert q["evidence_precision"] >= 0.90, q


def test_scenes_targets_are_consistent():
    scenes = render_scenes(range(4), stream=1, seed=0)
    assert scenes.images.shape == (4, 64, 64, 3) and scenes.patch_fraction.shape == (4, 64)
    assert scenes.patch_class_fraction.shape == (4, 64, len(SHAPE_CLASSES))
    torch.testing.assert_close(
        torch.from_numpy(scenes.patch_class_fraction.astype("float32").sum(-1)),
        torch.from_numpy(scenes.patch_fraction),
        atol=2e-3,
        rtol=0,
    )
    assert ((scenes.patch_class_fraction.max(1) > 0) == (scenes.labels > 0)).all()
    assert (scenes.patch_fraction >= OBJECT_PATCH_THRESHOLD).any(axis=1).all()
    again = render_scenes(range(2, 4), stream=1, seed=0)
    assert (again.images == scenes.images[2:]).all()


def test_training_scores_match_patch_scorer():
    cfg = GovernorTrainConfig(embed_dim=32, depth=2, num_heads=2)
    model = build_governor(cfg).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, scores, tokens = forward_with_scores(model, images)
        out = PatchScorer(model)(images)
    torch.testing.assert_close(scores, out.scores)
    torch.testing.assert_close(logits, model(images))
    assert tokens.shape == (3, 64, 32)


def test_train_save_load_round_trip(tmp_path):
    cfg = GovernorTrainConfig(
        out=str(tmp_path / "gov"), steps=2, batch_size=8, pool_size=16, embed_dim=32, depth=2, num_heads=2,
        warmup_steps=1, workers=1, log_every=1, val_every=2, val_images=8,
    )
    lines = []
    model, record = train_governor(cfg, log=lines.append)
    assert record["config"]["steps"] == 2 and any("val_coverage_topk" in line for line in lines)
    out = save_governor(model, cfg.out, record)
    scorer = load_governor(str(out))
    assert governor_activation(scorer) == "sigmoid"
    head = ClassHead.from_model(scorer, activation=governor_activation(scorer))
    assert head.classnames == list(SHAPE_CLASSES)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scorer(images).scores, PatchScorer(model)(images).scores)
    q = governor_quality(scorer, head, num_images=8, batch_size=4)
    assert 0.0 <= q["coverage_topk"] <= 1.0 and q["num_images"] == 8
