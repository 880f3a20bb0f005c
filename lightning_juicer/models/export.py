"""``export``: a Lightning checkpoint to open_clip's format (weights + config), loadable without this package.

The folder holds what open_clip's ``local-dir:`` schema and ``add_model_config`` read:

    OUT/open_clip_model.safetensors   the open_clip model's state dict
    OUT/open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...} (open_clip's hub format)
    OUT/NAME.json                     the bare model config, registered as NAME by open_clip.add_model_config(OUT)
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import safetensors.torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.push_to_hf_hub import save_config_for_hf

from lightning_juicer.errors import ConfigError
from lightning_juicer.models.checkpoint import check_state_dict, load_lightning_checkpoint
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.outputs import check_writable


def _model_class(class_path: str, key: str) -> type[JuicerCLIP]:
    """The checkpoint's model class; refused unless it is JuicerCLIP or a subclass (no other code)."""
    module_name, _, class_name = str(class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exn:
        raise ConfigError(f"{key}: the checkpoint's model class {class_path!r} cannot be imported") from exn
    if not (isinstance(found, type) and issubclass(found, JuicerCLIP)):
        raise ConfigError(f"{key}: the checkpoint's model class {class_path!r} is not a JuicerCLIP; refused")
    return found


def module_from_checkpoint(checkpoint: dict, key: str = "ckpt_path") -> JuicerCLIP:
    """The LightningModule a checkpoint's hyper-parameters describe, with its trained weights (no pretrained load)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "model_name" not in hparams:
        raise ConfigError(f"{key}: the checkpoint records no model hyper-parameters (model_name); export needs them")
    hparams.pop("_instantiator", None)
    model_class = _model_class(hparams.pop("_class_path", f"{JuicerCLIP.__module__}.{JuicerCLIP.__name__}"), key)
    module = model_class(**{**hparams, "pretrained": None})
    check_state_dict(module.state_dict(), checkpoint["state_dict"], key)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def write_open_clip(module: JuicerCLIP, out: Path, name: str) -> None:
    """Write the open_clip model's weights, hub-style config and bare named config into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in module.model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / HF_SAFE_WEIGHTS_NAME))
    save_config_for_hf(module.model, out / HF_CONFIG_NAME, module.model_cfg)
    (out / f"{name}.json").write_text(json.dumps(module.model_cfg, indent=2))


def export_checkpoint(*, ckpt_path: str, out: str, name: str | None = None) -> Path:
    """Export a Lightning checkpoint to an open_clip model folder.

    Args:
        ckpt_path: the Lightning checkpoint (``.../checkpoints/last.ckpt``), read with weights_only=True.
        out: output folder; load it with ``open_clip.create_model("local-dir:OUT")``, or register it with
            ``open_clip.add_model_config(OUT)`` and ``create_model(NAME, pretrained="OUT/open_clip_model.safetensors")``.
        name: model config name written as ``OUT/NAME.json``; default: the folder's name.
    """
    folder = Path(out)
    name = name or folder.resolve().name
    if not name or "/" in name:
        raise ConfigError(f"name: {name!r} is not a usable open_clip model name")
    if "siglip" in name.lower():  # open_clip.get_tokenizer gives such names the SigLIP T5 tokenizer
        raise ConfigError(f"name: {name!r} contains 'siglip', which makes open_clip pick another tokenizer; rename it")
    module = module_from_checkpoint(load_lightning_checkpoint(ckpt_path))
    check_writable(folder, "out")  # after the checkpoint is accepted: a refused one leaves no folder behind
    write_open_clip(module, folder, name)
    print(f"exported {module.family} model {module.hparams.model_name} to {folder} "
          f"(open_clip: create_model('local-dir:{folder}') or add_model_config + create_model('{name}', pretrained=...))")
    return folder
