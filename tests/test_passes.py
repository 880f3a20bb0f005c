"""The shard-pass framework on its own: a new pass is one subclass with its own settings and output, no faked types.

``MeanPass`` (defined here, ~40 lines) writes one JSON file per shard holding each image's mean pixel;
the framework gives it ranks, resume, mismatch refusal, the manifest and progress. The pass commands'
``--print_config`` and ``--help`` run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import webdataset as wds
import yaml

from lightning_juicer import cli
from lightning_juicer.errors import ConfigError
from lightning_juicer.io.decode import DraftedDecoder
from lightning_juicer.io.atomic import atomic_write
from lightning_juicer.passes import embeddings, vision
from lightning_juicer.passes.base import OpenShard, ShardPass
from lightning_juicer.passes.config import PassSettings, to_settings
from lightning_juicer.io.transforms import crop_transform
from lightning_juicer.passes.reader import ShardBatches, ShardJob
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class MeanSettings(PassSettings):
    """Mean pixel per image.

    Args:
        out_dir: where the per-shard JSON files go.
        scale: multiplies every mean (a setting the output depends on).
    """

    out_dir: str | None = None
    scale: float = 1.0


class MeanModule(L.LightningModule):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"mean": batch["image"].float().mean(dim=(1, 2, 3)) * self.scale}


class MeanPass(ShardPass[MeanSettings]):
    settings_type = MeanSettings
    label = "mean pass"
    manifest_name = "mean.manifest.json"

    def output_path(self, url: str) -> Path:
        return Path(self.settings.out_dir) / Path(url).name.replace(".tar", ".mean.json")

    def load_models(self) -> None:
        self.module = MeanModule(self.settings.scale)

    def existing(self, job: ShardJob) -> dict[str, Any] | None:
        if not job.output.is_file():
            return None
        stored = json.loads(job.output.read_text())
        if stored["scale"] != self.settings.scale:
            return self.mismatched(ConfigError(f"scale: {job.output} was written with scale {stored['scale']}"))
        return stored["counts"]

    def dataset_for(self, jobs: list[ShardJob]) -> ShardBatches:
        return ShardBatches(jobs, crop_transform((16, 16), "bilinear"), self.settings.batch_size, (16, 16))

    def predictor(self) -> L.LightningModule:
        return self.module

    def finish_shard(self, job: ShardJob, shard: OpenShard, counts: dict[str, Any]) -> dict[str, Any]:
        body = {"keys": shard.keys, "mean": shard.arrays()["mean"].tolist(), "scale": self.settings.scale,
                "counts": counts}
        atomic_write(job.output, lambda f: f.write(json.dumps(body).encode()))
        return counts


def _run(tiny_synthetic, out: Path, **extra: Any) -> dict:
    settings = to_settings(MeanSettings, {"shards": tiny_synthetic.train_shards, "out_dir": str(out), "batch_size": 24,
                                          "num_workers": 0, "accelerator": "cpu", "devices": 1, **extra}, "mean")
    return MeanPass(settings).run()


def test_a_new_pass_is_one_subclass_and_gets_resume_mismatch_and_manifest(tiny_synthetic, tmp_path, capsys):
    manifest = _run(tiny_synthetic, tmp_path, progress=True)
    assert manifest["totals"] == {"shards": 4, "shards_written": 4, "shards_existing": 0, "shards_failed": 0,
                                  "samples_in": 256, "samples_written": 256, "skipped": {}}
    assert manifest["config"]["scale"] == 1.0 and manifest["run"]["samples_scored"] == 256
    err = capsys.readouterr().err  # pytest's stdout is no terminal: plain progress lines, no carriage returns
    assert re.search(r"mean pass \(rank 0\): 12/12 batches, 4/4 shards, [\d.]+ samples/s", err) and "\r" not in err

    url = sorted(Path(tiny_synthetic.train_shards).parent.glob("*.tar"))[1]
    stored = json.loads((tmp_path / "00001.mean.json").read_text())
    sample = next(iter(wds.tarfile_samples(iter([{"url": str(url)}]))))
    transform = crop_transform((16, 16), "bilinear")  # decoded as the pass decodes (JPEG draft mode for small crops)
    expected = transform(DraftedDecoder(transform)(sample["jpg"])).float().mean().item()
    assert stored["keys"][0] == sample["__key__"] and stored["mean"][0] == pytest.approx(expected, rel=1e-6)
    assert stored["counts"] == {"in": 64, "written": 64, "skipped": {}}

    again = _run(tiny_synthetic, tmp_path, progress=False)
    assert again["totals"]["shards_existing"] == 4 and again["run"]["samples_scored"] == 0
    with pytest.raises(ConfigError, match=r"^scale: .*00000.mean.json was written with scale 1.0"):
        _run(tiny_synthetic, tmp_path, scale=2.0, progress=False)
    redone = _run(tiny_synthetic, tmp_path, scale=2.0, on_mismatch="overwrite", progress=False)
    assert redone["totals"]["shards_written"] == 4
    assert json.loads((tmp_path / "00001.mean.json").read_text())["mean"][0] == pytest.approx(2 * expected, rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or p.suffix == ".jsonl") == []


def test_the_command_table_resolves_lazily_to_each_pass_main():
    assert all(re.fullmatch(r"[\w.]+:\w+", target) for target in cli.COMMANDS.values())
    assert cli.command("vision") is vision.main and cli.command("embeddings") is embeddings.main


def _command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_juicer", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_print_config_shows_the_merged_config_and_help_every_nested_key(capsys):
    result = _command("vision", "--config", "configs/preprocess/vision.yaml", "--governor.head.kind", "none",
                      "--batch_size", "7", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["governor"]["name"] == "vit_small_patch16_224.dino" and printed["governor"]["head"]["kind"] == "none"
    assert printed["batch_size"] == 7 and printed["threshold"] is None and printed["shards"] is None
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["embeddings", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--reference.name" in out and "--governor.help" in out
    assert "--on_mismatch {error,overwrite}" in out and "Lightning strategy (ddp, ...)" in out
