"""Fitting a one-vs-rest evidence head on the governor's CLS features (issue 11, point 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.head_fit import HeadFitConfig, evidence_figures, fit_head, fit_linear_head
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.passes.vision import load_pass_governor
from lightning_juicer.passes.vision import vision_settings as to_config
from tests.conftest import REPO

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "none": (128, 128, 128)}


def _folder(root, per_class=12, seed=0, colours=COLOURS):
    """Noisy flat-colour images: one folder per colour, grey ones in ``none``."""
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                              depth=2, num_heads=4, num_classes=0)
    return PatchScorer(model.eval())


def test_fit_linear_head_separates_known_classes_and_says_none():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0]])  # class a, class b, none
    group = torch.arange(300) % 3
    x = centres[group] + torch.randn(300, 3, generator=gen) * 0.5 + 10.0  # offset: the bias must absorb it
    y = torch.stack([group == 0, group == 1], 1).float()
    weight, bias = fit_linear_head(x, y, weight_decay=1e-3)
    probs = ClassHead(weight, bias, ["a", "b"], activation="sigmoid")(x)
    figures = evidence_figures(probs, y, ["a", "b"], threshold=0.7, max_classes=3)
    assert figures["precision"] == 1.0 and figures["recall"] == 1.0 and figures["false_evidence_rate_none"] == 0.0
    assert figures["none_images"] == 100 and figures["class_images"] == 200


def test_evidence_figures_count_false_evidence_on_none_images():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.75], [0.2, 0.1], [0.95, 0.1]])
    targets = torch.tensor([[1.0, 0], [0, 1.0], [0, 0], [0, 0]])
    f = evidence_figures(probs, targets, ["a", "b"], threshold=0.7, max_classes=3)
    assert f["evidence_classes"] == 4 and f["precision"] == pytest.approx(2 / 4)
    assert f["recall"] == 1.0 and f["false_evidence_rate_none"] == 0.5
    assert evidence_figures(probs, targets, ["a", "b"], 0.7, 1)["recall"] == 0.5  # b is second for row 1


def test_fit_head_writes_a_head_the_loader_reads_with_its_classes_and_sigmoid(tmp_path, scorer):
    root = _folder(tmp_path / "folder")
    out = tmp_path / "heads" / "colours.safetensors"
    report = fit_head(HeadFitConfig(root=str(root), out=str(out), governor="tiny", val_fraction=0.25), scorer)
    held = report["held_out"]
    assert held["class_images"] == 6 and held["none_images"] == 3
    assert held["precision"] == 1.0 and held["recall"] == 1.0 and held["false_evidence_rate_none"] == 0.0
    assert json.loads(out.with_suffix(".json").read_text())["held_out"]["recall"] == 1.0
    head = ClassHead.from_file(out, embed_dim=48)
    assert head.classnames == ["blue", "red"] and head.activation == "sigmoid"
    with pytest.raises(ConfigError, match="governor.head: .* expects 48-d input but .* 64-d"):
        ClassHead.from_file(out, embed_dim=64)  # a head fitted on another governor
    red = torch.stack([scorer.prepare(torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1).expand(3, 32, 32)[None],
                                      (0.0,) * 3, (1.0,) * 3)[0]])
    red = (red - torch.tensor(scorer.mean).view(1, 3, 1, 1)) / torch.tensor(scorer.std).view(1, 3, 1, 1)
    assert head(scorer(red).cls)[0].argmax() == 1


def test_vision_pass_uses_the_recorded_names_and_sigmoid_of_a_fitted_head(tmp_path, scorer):
    folder = tmp_path / "governor"
    timm.models.save_for_hf(scorer.model, folder)
    out = tmp_path / "head.safetensors"
    fit_head(HeadFitConfig(root=str(_folder(tmp_path / "folder")), out=str(out), governor=str(folder)))
    cfg = {"shards": "x.tar", "governor": {"name": str(folder), "head": {"kind": "file", "path": str(out)}}}
    governor = load_pass_governor(to_config(cfg))
    assert governor.head.classnames == ["blue", "red"]
    assert governor.settings["head"]["activation"] == "sigmoid" and governor.settings["head"]["kind"] == "file"


def test_bad_folders_are_refused_in_one_line(tmp_path, scorer):
    root = _folder(tmp_path / "folder", per_class=4)
    out = str(tmp_path / "h.safetensors")
    cases = [
        (HeadFitConfig(root=str(root), out=out, classnames=["red", "green"]), r"^classnames: do not match .*'green'"),
        (HeadFitConfig(root=str(tmp_path / "nothing"), out=out), r"^root: .*nothing"),
        (HeadFitConfig(root=str(root), out=str(tmp_path / "h.pt")), r"^out: .* must end in \.safetensors"),
    ]
    (tmp_path / "empty" / "red").mkdir(parents=True)
    cases.append((HeadFitConfig(root=str(tmp_path / "empty"), out=out), r"^root: "))
    only_none = _folder(tmp_path / "only_none", per_class=4, colours={"none": (1, 2, 3)})
    cases.append((HeadFitConfig(root=str(only_none), out=out), r"^root: .* no class folders"))
    for cfg, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            fit_head(cfg, scorer)
        assert "\n" not in str(error.value)


def test_command_line_reports_one_line_errors():
    result = subprocess.run([sys.executable, "preprocess/fit_head.py", "root=/no/such/folder", "out=x.safetensors",
                             "governor=juicer-synthetic"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: root: /no/such/folder")
    assert len(result.stderr.strip().splitlines()) == 1
