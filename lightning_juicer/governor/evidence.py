"""Class evidence (Eq. 4): ``p = Γ_pred(v_c)``, classes with p > ε (at most N) form the visual evidence C'.

``Γ_pred`` is a ``ClassHead`` on the governor's CLS embedding, built from one of:

* the governor's own classifier (``ClassHead.from_model``): a timm model's ``head`` when
  ``num_classes > 0``; class names from the model's ``pretrained_cfg['label_names']``, else the
  ImageNet-1k names for 1000-way heads, else a class-name file.
* a linear head file (``ClassHead.from_file``): a torch / safetensors state dict holding one 2-D
  ``*weight`` [C, D] and its ``*bias`` [C] (e.g. ``{"weight", "bias"}``, or a DINO linear-eval
  checkpoint whose ``state_dict`` holds ``module.linear.weight`` / ``module.linear.bias``), applied
  to the final CLS embedding. Only plain [C, D] heads on that embedding are supported: DINO's
  published ViT-S linear heads take the CLS tokens of the last 4 blocks concatenated (and ViT-B's
  the CLS token concatenated with the average-pooled patch tokens), so their D does not match and
  they are refused with a clear message. Class names default to ImageNet-1k
  (``open_clip.IMAGENET_CLASSNAMES``) or come from a text file, one name per line.
* a zero-shot head (``ClassHead.zero_shot``) built from an open_clip CLIP model's text tower with
  ``open_clip.build_zero_shot_classifier``. It compares text embeddings with the CLS embedding of
  that same CLIP model's image tower, so the governor must then be that model
  (``PatchScorer(clip_model)``, whose CLS embedding is the projected image feature).

Probabilities are per-class sigmoids (``activation="sigmoid"``: one-vs-rest heads, which can say
"none of these") or a softmax over classes (``activation="softmax"``: a closed set, where an image
holding none of the classes still gets a confident class). The activation a governor folder
(``config.json``) or a head file (safetensors metadata, see ``governor.head_fit``) records is the
default; a head that records none is refused (``governor.head.activation``) unless the activation is
given explicitly: set ``governor.head.activation: softmax`` to accept closed-set evidence knowingly,
fit a one-vs-rest head on your classes (``preprocess/fit_head.py``), or switch evidence off with
``governor.head.kind: none`` (or ``max_classes: 0`` at use time).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.classnames import read_classnames
from lightning_juicer.io.sidecar import strongest_classes

IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(open_clip.IMAGENET_CLASSNAMES)
ACTIVATIONS = ("softmax", "sigmoid")
ACTIVATION_KEY = "governor.head.activation"


def resolve_activation(requested: str | None, recorded: str | None, source: str) -> str:
    """The explicit activation, else the one ``source`` records; a head that records none is refused."""
    if requested is not None:
        return requested
    if recorded is not None:
        return recorded
    raise ConfigError(
        f"{ACTIVATION_KEY}: {source} records no activation, so its evidence would be a closed-set softmax that cannot "
        f"say 'none of these'; fit a sigmoid head (preprocess/fit_head.py), set {ACTIVATION_KEY}=softmax to accept "
        "it anyway, or turn evidence off with governor.head.kind=none"
    )


def _classnames(
    classnames: Sequence[str] | str | Path | None, num_classes: int | None, default: Sequence[str] | None = None
) -> list[str]:
    """Explicit names or a names file, else ``default`` when it fits, else ImageNet-1k when it fits."""
    if isinstance(classnames, (str, Path)):
        classnames = read_classnames(classnames, "governor.classnames")
    elif classnames is None:
        if default is not None and len(default) == num_classes:
            classnames = default
        elif num_classes in (None, len(IMAGENET_CLASSNAMES)):
            classnames = IMAGENET_CLASSNAMES
        else:
            raise ConfigError(f"governor.classnames: the head has {num_classes} classes; give a class-name file")
    if num_classes is not None and len(classnames) != num_classes:
        raise ConfigError(f"governor.classnames: {len(classnames)} names for a head with {num_classes} classes")
    return list(classnames)


class ClassHead(nn.Module):
    """Γ_pred: a frozen linear classifier on the governor's CLS embedding, with its class names."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        classnames: Sequence[str],
        logit_scale: float = 1.0,
        normalize: bool = False,
        activation: str = "softmax",
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"governor.activation: {activation!r} is not one of {ACTIVATIONS}")
        if len(classnames) != weight.shape[0]:
            raise ConfigError(f"governor.classnames: {len(classnames)} names for a head with {weight.shape[0]} classes")
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.classnames = list(classnames)
        self.logit_scale = float(logit_scale)
        self.normalize = normalize
        self.activation = activation
        self.threshold = threshold  # the evidence ε the head records (chosen on held-out images), if any

    @property
    def embed_dim(self) -> int:
        """Width D of the CLS embedding the head expects."""
        return int(self.weight.shape[1])

    def logits(self, cls: torch.Tensor) -> torch.Tensor:
        """Class logits [B, C] (float32) for CLS embeddings [B, D]."""
        if cls.shape[-1] != self.embed_dim:
            raise ConfigError(
                f"governor.head: the head expects {self.embed_dim}-d input but the CLS embedding is {cls.shape[-1]}-d"
            )
        x = cls.float()
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return self.logit_scale * F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C] (float32) for CLS embeddings [B, D]."""
        logits = self.logits(cls)
        return logits.softmax(dim=-1) if self.activation == "softmax" else logits.sigmoid()

    @classmethod
    def from_model(
        cls, model: nn.Module, classnames: Sequence[str] | str | Path | None = None, activation: str | None = None
    ) -> ClassHead:
        """The governor's own classifier head; ``activation`` defaults to the one its folder records (else refused)."""
        from lightning_juicer.governor.loading import governor_activation

        model = getattr(model, "model", model)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"governor.head: {type(model).__name__} has no classifier head (num_classes=0); "
                "give a linear head file or use a zero-shot head"
            )
        labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        names = _classnames(classnames, head.out_features, labels)
        source = f"the classifier of governor {type(model).__name__}"
        activation = resolve_activation(activation, governor_activation(model), source)
        return cls(head.weight, head.bias, names, activation=activation)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        classnames: Sequence[str] | str | Path | None = None,
        embed_dim: int | None = None,
        activation: str | None = None,
    ) -> ClassHead:
        """A linear head from a state dict file with ``weight`` [C, D] and ``bias`` [C] (see module docs).

        Class names and activation default to those recorded in a safetensors file's metadata
        (``classnames``: JSON list, ``activation``), as ``preprocess/fit_head.py`` writes them; the
        recorded ``threshold`` (the ε calibrated on held-out images; 1.0 when the head abstains) becomes
        ``head.threshold``, the vision pass's ε when its ``threshold`` is not given."""
        weight, bias = _load_linear(Path(path))
        recorded = head_metadata(Path(path))
        if classnames is None and "classnames" in recorded:
            classnames = recorded["classnames"]
        activation = resolve_activation(activation, recorded.get("activation"), f"head file {path}")
        if embed_dim is not None and weight.shape[1] != embed_dim:
            raise ConfigError(
                f"governor.head: {path} expects {weight.shape[1]}-d input but the governor's CLS embedding is "
                f"{embed_dim}-d (heads on concatenated multi-block features, like DINO's published linear "
                "probes, are not supported; use a [C, D] head on the final CLS embedding)"
            )
        return cls(weight, bias, _classnames(classnames, weight.shape[0]), activation=activation,
                   threshold=recorded.get("threshold"))

    @classmethod
    def zero_shot(
        cls,
        clip_model: nn.Module,
        tokenizer: Callable,
        classnames: Sequence[str] | str | Path | None = None,
        templates: Sequence[str | Callable[[str], str]] | None = None,
        device: torch.device | str | None = None,
        activation: str | None = None,
    ) -> ClassHead:
        """A zero-shot head from an open_clip model's text tower; pair it with ``PatchScorer(clip_model)``.

        Its probabilities are a softmax over the given names (a closed set): pass ``activation="softmax"``."""
        activation = resolve_activation(activation, None, "a zero-shot head")
        if not hasattr(clip_model, "encode_text"):
            raise ConfigError(
                f"governor.head: zero-shot heads need an open_clip CLIP model, got {type(clip_model).__name__}"
            )
        names = _classnames(classnames, None)
        templates = tuple(templates or open_clip.OPENAI_IMAGENET_TEMPLATES)
        device = device or next(clip_model.parameters()).device
        with torch.no_grad():
            weight = open_clip.build_zero_shot_classifier(
                clip_model, tokenizer, names, templates, num_classes_per_batch=10, device=device, use_tqdm=False
            )
        logit_scale = float(clip_model.logit_scale.detach().exp()) if hasattr(clip_model, "logit_scale") else 100.0
        return cls(weight.T, None, names, logit_scale=logit_scale, normalize=True, activation=activation)


def head_metadata(path: Path) -> dict:
    """``classnames`` (list), ``activation`` and ``threshold`` recorded in a safetensors head file's metadata."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(f"governor.head.path: cannot read head file {path}: {e}") from e
    out: dict = {}
    if meta.get("activation"):
        out["activation"] = meta["activation"]
    if meta.get("threshold"):
        try:
            out["threshold"] = float(meta["threshold"])
        except ValueError as e:
            raise ConfigError(f"governor.head.path: {path} has an unreadable threshold {meta['threshold']!r}") from e
        if not 0.0 <= out["threshold"] <= 1.0:
            raise ConfigError(f"governor.head.path: {path} records threshold {out['threshold']} outside [0, 1]")
    if meta.get("classnames"):
        try:
            names = json.loads(meta["classnames"])
        except ValueError as e:
            raise ConfigError(f"governor.head.path: {path} has unreadable classnames metadata") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"governor.head.path: {path} classnames metadata is not a list of names")
        out["classnames"] = names
    return out


def _load_linear(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The single 2-D ``*weight`` tensor of a state dict file and its matching ``*bias``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ConfigError(f"governor.head: cannot load linear head {path}: {e}") from e
    for key in ("state_dict", "model", "head"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    weights = [k for k, v in state.items() if k.endswith("weight") and torch.is_tensor(v) and v.ndim == 2]
    if len(weights) != 1:
        raise ConfigError(f"governor.head: {path} must hold exactly one 2-D weight [C, D], found {weights}")
    weight = state[weights[0]]
    bias = state.get(weights[0][: -len("weight")] + "bias")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ConfigError(f"governor.head: {path} has bias {tuple(bias.shape)} for weight {tuple(weight.shape)}")
    return weight, bias


def class_evidence(
    probs: torch.Tensor, classnames: Sequence[str], threshold: float = 0.7, max_classes: int = 3
) -> list[list[tuple[str, float]]]:
    """Per sample, the classes with p > threshold, most probable first, at most max_classes of them."""
    probs = probs.detach().float()
    k = min(max_classes, probs.shape[-1])
    if k <= 0:
        return [[] for _ in range(probs.shape[0])]
    top = probs.topk(k, dim=-1)
    return [
        strongest_classes(((classnames[i], p) for p, i in zip(values, indices)), threshold, max_classes)
        for values, indices in zip(top.values.tolist(), top.indices.tolist())
    ]
