"""Kill-and-rerun of the text pass (rules backend) and the embeddings pass, as real processes killed with SIGKILL.

Each pass is run three times as a subprocess: uninterrupted into one folder; into a second folder
killed (``tests/kill_midway.py``) half-way through writing its second output file, which leaves a
finished first file and a partial temporary file; then rerun there. The rerun must skip the
finished shard, compute the rest, leave no temporary or per-rank files, and end with outputs
byte-identical to the uninterrupted run's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_juicer.io.sidecar import sidecar_info
from lightning_juicer.passes.vision import run_vision_pass
from lightning_juicer.models.module import JuicerCLIP
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

KILL = [sys.executable, "tests/kill_midway.py", "2"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _outputs(folder: Path, suffix: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"*{suffix}"))}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".jsonl"))


def _kill_and_rerun(command: Callable[[Path], list[str]], clean: Path, resumed: Path, suffix: str,
                    finished: Callable[[Path], bool] = Path.is_file) -> dict:
    """Run uninterrupted, killed and rerun; returns the rerun's stdout lines and checks the kill took effect."""
    done = _run([sys.executable, *command(clean)])
    assert done.returncode == 0, done.stderr[-2000:]
    killed = _run([*KILL, *command(resumed)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sum(map(finished, resumed.glob(f"*{suffix}"))) == 1  # the first shard finished, the second was cut
    assert any(".tmp-" in p.name for p in resumed.iterdir())  # ... leaving a partial temporary file
    rerun = _run([sys.executable, *command(resumed)])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _leftovers(resumed) == [] and _leftovers(clean) == []
    expected = _outputs(clean, suffix)
    assert len(expected) == 4 and _outputs(resumed, suffix) == expected
    return {"stdout": rerun.stdout}


@pytest.fixture(scope="module")
def vision_sidecars(tiny_synthetic, tmp_path_factory) -> Path:
    """Vision sidecars of the 4 tiny synthetic shards from the shipped governor."""
    side = tmp_path_factory.mktemp("kill_vision") / "side"
    run_vision_pass({"shards": tiny_synthetic.train_shards, "sidecar_dir": str(side),
                     "governor": {"name": "juicer-synthetic"}, "batch_size": 64, "num_workers": 0,
                     "accelerator": "cpu", "devices": 1, "progress": False})
    return side


def test_killed_text_pass_reruns_to_identical_sidecars(tiny_synthetic, vision_sidecars, tmp_path):
    for name in ("clean", "resumed"):  # the rules pass writes its captions into the sidecars in place
        shutil.copytree(vision_sidecars, tmp_path / name)

    def command(folder: Path) -> list[str]:
        return ["preprocess/text_pass.py", "--config", "configs/preprocess/text.yaml",
                "--shards", tiny_synthetic.train_shards, "--sidecar_dir", str(folder), "--backend", "rules",
                "--batch_size", "16", "--num_workers", "0", "--accelerator", "cpu", "--devices", "1",
                "--progress", "false"]

    def has_captions(sidecar: Path) -> bool:
        return "text" in sidecar_info(sidecar).extra

    rerun = _kill_and_rerun(command, tmp_path / "clean", tmp_path / "resumed", ".juice.parquet", has_captions)
    assert "(3 written, 1 already done, 0 failed)" in rerun["stdout"]


def test_killed_embeddings_pass_reruns_to_identical_files(tiny_synthetic, tiny_model_args, tmp_path):
    torch.manual_seed(0)
    module = JuicerCLIP(**tiny_model_args)
    reference = tmp_path / "reference.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, reference)

    def command(folder: Path) -> list[str]:
        return ["preprocess/embeddings.py", "--config", "configs/preprocess/embeddings.yaml",
                "--shards", tiny_synthetic.train_shards, "--out_dir", str(folder), "--reference.name", str(reference),
                "--governor.name", "juicer-synthetic", "--batch_size", "48", "--num_workers", "0",
                "--accelerator", "cpu", "--devices", "1", "--progress", "false"]

    rerun = _kill_and_rerun(command, tmp_path / "clean", tmp_path / "resumed", ".emb.parquet")
    assert "(3 written, 1 already done, 0 failed)" in rerun["stdout"]
