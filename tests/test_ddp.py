"""A real 2-process CPU DDP fit (gloo) over an uneven number of shards per rank finishes without hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_juicer.synthetic import SyntheticConfig, prepare_synthetic
from tests.conftest import QUICKSTART, REPO


def test_two_process_ddp_fit_on_uneven_shards_finishes(tmp_path):
    # 3 shards over 2 ranks: rank 0 reads 2 shards, rank 1 reads 1; both must run 6 batches.
    data = prepare_synthetic(SyntheticConfig(root=str(tmp_path / "data"), num_train=192, samples_per_shard=64,
                                             num_val=32, eval_per_class=2, num_retrieval=10))
    assert data.train_shards.endswith("{00000..00002}.tar")
    command = [
        sys.executable, "-m", "lightning_juicer", "fit", "--config", str(QUICKSTART),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.synthetic.root", str(data.root), "--data.init_args.batch_size", "16",
        "--data.init_args.num_workers", "1", "--model.init_args.warmup_steps", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run finished" in result.stdout
    manifest = json.loads(next(Path(tmp_path).rglob("manifest.json")).read_text())
    assert manifest["global_step"] == 6  # ceil(192 / (16 x 2)) batches on each rank, one epoch
    assert manifest["images_trained"] == 192
