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
from lightning_juicer.governor.calibration import ABSTAIN_THRESHOLD, calibrate_threshold
from lightning_juicer.governor.evidence import ClassHead, class_evidence
from lightning_juicer.governor.head_fit import HeadFitConfig, evidence_figures, fit_head, fit_linear_head, save_head
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
    report = fit_head(HeadFitConfig(root=str(root), out=str(out), governor="tiny", val_fraction=0.25, threshold=0.7),
                      scorer)
    held = report["held_out"]
    assert held["class_images"] == 6 and held["none_images"] == 3
    assert held["precision"] == 1.0 and held["recall"] == 1.0 and held["false_evidence_rate_none"] == 0.0
    assert json.loads(out.with_suffix(".json").read_text())["held_out"]["recall"] == 1.0
    head = ClassHead.from_file(out, embed_dim=48)
    assert head.classnames == ["blue", "red"] and head.activation == "sigmoid"
    assert head.threshold == 0.7 and report["calibration"] is None  # a fixed threshold is recorded as given
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
    result = subprocess.run([sys.executable, "preprocess/fit_head.py", "--root", "/no/such/folder",
                             "--out", "x.safetensors", "--governor", "juicer-synthetic"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: root: /no/such/folder")
    assert len(result.stderr.strip().splitlines()) == 1


def _ranked_case():
    """10 one-class images: the head's top class is right for the 8 most confident, wrong for the last 2."""
    p = torch.tensor([0.99, 0.97, 0.95, 0.93, 0.91, 0.89, 0.87, 0.85, 0.60, 0.55])
    probs = torch.stack([p, torch.full_like(p, 0.01)], 1)  # class a first, class b far below every ε
    targets = torch.zeros(10, 2)
    targets[:8, 0] = 1.0  # right: a
    targets[8:, 1] = 1.0  # wrong: the image holds b
    return probs, targets


def test_calibration_picks_the_smallest_threshold_reaching_the_target_precision():
    probs, targets = _ranked_case()
    cal = calibrate_threshold(probs, targets, target_precision=0.95, max_classes=3, min_evidence=4)
    assert not cal.abstain and 0.60 <= cal.threshold < 0.85  # keeps the 8 right ones, drops 0.60 and 0.55
    assert cal.precision == 1.0 and cal.evidence_classes == 8
    evidence = class_evidence(probs, ["a", "b"], cal.threshold, 3)
    assert [len(e) for e in evidence] == [1] * 8 + [0, 0]
    # a lower target accepts the ninth (8 of 9 right = 0.89) but not the tenth (8 of 10 = 0.8)
    low = calibrate_threshold(probs, targets, target_precision=0.85, max_classes=3, min_evidence=4)
    assert 0.55 <= low.threshold < 0.60 and low.evidence_classes == 9
    # a wrong class in the top ranks sinks every threshold below it, even where the precision recovers
    probs2, targets2 = probs.clone(), targets.clone()
    targets2[0] = torch.tensor([0.0, 1.0])  # the most confident one is wrong
    cal2 = calibrate_threshold(probs2, targets2, target_precision=0.75, max_classes=3, min_evidence=1)
    assert cal2.abstain  # precision 0 over the first evidence class: no prefix stays above target


def test_calibration_abstains_when_the_target_is_unreachable():
    probs, targets = _ranked_case()
    targets[:8] = targets[:8].flip(1)  # the confident ones are now all wrong
    cal = calibrate_threshold(probs, targets, target_precision=0.95, max_classes=3, min_evidence=4)
    assert cal.abstain and cal.threshold == ABSTAIN_THRESHOLD and cal.precision is None
    assert "no threshold reaches precision 0.95" in cal.reason
    assert class_evidence(probs, ["a", "b"], cal.threshold, 3) == [[]] * 10  # a sigmoid never exceeds 1.0
    few = calibrate_threshold(*_ranked_case(), target_precision=0.95, max_classes=1, min_evidence=20)
    assert few.abstain and "fewer than 20 evidence classes" in few.reason  # 10 images cannot show a precision


def test_fit_head_calibrates_on_one_part_of_the_held_out_images_and_records_it(tmp_path, scorer):
    root = _folder(tmp_path / "folder", per_class=20)
    out = tmp_path / "head.safetensors"
    report = fit_head(HeadFitConfig(root=str(root), out=str(out), val_fraction=0.5, min_evidence=5), scorer)
    cal = report["calibration"]
    assert cal["images"] == 15 and report["held_out"]["images"] == 15  # 30 held out: half choose ε, half measure
    assert not report["abstain"] and 0.0 < report["threshold"] < 1.0 and cal["precision"] >= 0.95
    assert report["held_out"]["precision"] == 1.0 and report["held_out"]["false_evidence_rate_none"] == 0.0
    assert ClassHead.from_file(out, embed_dim=48).threshold == pytest.approx(report["threshold"])
    unreachable = fit_head(HeadFitConfig(root=str(root), out=str(tmp_path / "u.safetensors"), val_fraction=0.5,
                                         min_evidence=100), scorer)
    assert unreachable["abstain"] and unreachable["held_out"]["evidence_classes"] == 0
    assert ClassHead.from_file(tmp_path / "u.safetensors").threshold == ABSTAIN_THRESHOLD


@pytest.mark.parametrize(("recorded", "given", "expected"),
                         [(0.83, None, 0.83), (0.83, 0.5, 0.5), (None, None, 0.7), (1.0, None, 1.0)])
def test_vision_pass_uses_the_recorded_threshold_unless_one_is_given(tmp_path, scorer, recorded, given, expected):
    folder = tmp_path / "governor"
    timm.models.save_for_hf(scorer.model, folder)
    out = tmp_path / "head.safetensors"
    meta = {"threshold": recorded} if recorded is not None else {}
    save_head(out, torch.randn(2, 48), torch.zeros(2), ["blue", "red"], **meta)
    cfg = {"shards": "x.tar", "governor": {"name": str(folder), "head": {"kind": "file", "path": str(out)}},
           "threshold": given}
    governor = load_pass_governor(to_config(cfg))
    assert governor.settings["threshold"] == expected  # explicit > recorded (1.0: the head abstains) > 0.7


def test_vision_pass_refuses_a_threshold_outside_zero_one():
    with pytest.raises(ConfigError, match=r"^threshold: 1.5 is outside \[0, 1\]"):
        to_config({"shards": "x.tar", "threshold": 1.5})
