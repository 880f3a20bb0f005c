"""Precomputed mode: vision pass -> sidecars -> the DataModule selects from them by key -> training."""

from __future__ import annotations

import shutil

import open_clip
import pytest
import timm
import torch

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.io.shards import expand_shards
from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import resample_scores, select_topk
from lightning_juicer.io.sidecar import read_sidecar, sidecar_path
from lightning_juicer.passes.vision import run_vision_pass

SPEC = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))


@pytest.fixture(scope="module")
def precomputed(tiny_synthetic, tmp_path_factory):
    """Sidecars for the tiny synthetic shards from a tiny random governor on a 4x4 grid (student: 8x8)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=0)
    root = tmp_path_factory.mktemp("precomputed")
    timm.models.save_for_hf(model, root / "governor")
    manifest = run_vision_pass({
        "shards": tiny_synthetic.train_shards, "sidecar_dir": str(root / "side"),
        "governor": {"name": str(root / "governor")}, "batch_size": 32, "num_workers": 0,
        "accelerator": "cpu", "devices": 1, "progress": False,
    })
    assert manifest["totals"]["samples_written"] == 256
    return root


def datamodule(tiny_synthetic, root, sidecar_dir, **kwargs) -> JuicerDataModule:
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, batch_size=16, num_workers=0, shuffle_buffer=0,
                          selection="topk", keep_ratio=0.25, scores="sidecar", sidecar_dir=str(sidecar_dir),
                          governor=GovernorConfig(name=str(root / "governor")), data_spec=SPEC, **kwargs)
    dm.setup("fit")
    return dm


def test_training_batches_keep_the_top_k_of_the_sidecar_scores(tiny_synthetic, precomputed):
    dm = datamodule(tiny_synthetic, precomputed, precomputed / "side")
    tables = {}
    for url in expand_shards(tiny_synthetic.train_shards, "k"):
        table = read_sidecar(sidecar_path(url, precomputed / "side"))
        tables.update({key: table.scores[i] for i, key in enumerate(table.keys)})
    batches = list(dm.train_dataloader())
    assert len(batches) == 16
    for batch in batches[:3]:
        scores = torch.stack([torch.from_numpy(tables[k].astype("float32")) for k in batch["key"]])
        expected = select_topk(resample_scores(scores, (4, 4), (8, 8)), 16)
        assert torch.equal(batch["keep"], expected)
    assert not dm.drops


@pytest.mark.parametrize("policy, reason", [("random", "random_for_missing_sidecar"), ("skip", "no_sidecar_entry")])
def test_samples_without_a_sidecar_follow_the_policy_and_are_counted(tiny_synthetic, precomputed, tmp_path, policy, reason):
    partial = tmp_path / "side"
    shutil.copytree(precomputed / "side", partial)
    first = expand_shards(tiny_synthetic.train_shards, "k")[0]
    sidecar_path(first, partial).unlink()
    dm = datamodule(tiny_synthetic, precomputed, partial, missing_sidecar=policy)
    keys = []
    for batch in dm.train_dataloader():
        dm.on_after_batch_transfer(batch, 0)
        keys += batch["key"]
        assert batch["keep"].shape == (16, 16)
    first_shard_keys = {k for k in keys if k.startswith("00000")}
    if policy == "skip":
        assert not first_shard_keys and dm.drops[reason] >= 64
    else:
        assert len(first_shard_keys) == 64 and dm.drops[reason] == 64


def test_sidecars_of_another_governor_are_refused_at_setup(tiny_synthetic, precomputed):
    with pytest.raises(ConfigError, match="data.init_args.governor.name: sidecar .* was written by governor"):
        JuicerDataModule(train_shards=tiny_synthetic.train_shards, selection="topk", scores="sidecar",
                         sidecar_dir=str(precomputed / "side"), governor=GovernorConfig(name="juicer-synthetic"),
                         data_spec=SPEC).setup("fit")


def test_missing_sidecars_and_impossible_policy_are_refused(tiny_synthetic, precomputed, tmp_path):
    with pytest.raises(ConfigError, match="data.init_args.sidecar_dir: no sidecars found"):
        datamodule(tiny_synthetic, precomputed, tmp_path)
    with pytest.raises(ConfigError, match="data.init_args.missing_sidecar"):
        JuicerDataModule(missing_sidecar="full")
