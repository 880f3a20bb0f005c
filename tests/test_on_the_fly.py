"""On-the-fly selection: the DataModule leaves `keep` empty and describes the selection; the LightningModule holds
the frozen governor and fills `keep` in its training step."""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.selection import resample_scores, select_topk
from lightning_juicer.models.governed import build_governor

SPEC = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))


@pytest.fixture(scope="module")
def governor_dir(tmp_path_factory):
    """A tiny random timm ViT governor on a coarser grid (32 px, patch 8: 4x4) than the student (8x8)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=12)
    path = tmp_path_factory.mktemp("governor") / "tiny"
    names = ["arrow", "circle", "crescent", "cross", "diamond", "heart", "hexagon", "pentagon", "ring", "square",
             "star", "triangle"]
    timm.models.save_for_hf(model, path, model_config={"label_names": names, "activation": "sigmoid"})
    return path


def test_topk_on_the_fly_matches_the_governor_scores_on_the_student_grid(tiny_synthetic, governor_dir):
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, batch_size=8, num_workers=0, shuffle_buffer=0,
                          selection="topk", keep_ratio=0.25, scores="on_the_fly",
                          governor=GovernorConfig(name=str(governor_dir)), data_spec=SPEC)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw["keep"] is None  # filled on the device, by the model's training step
    assert raw["image"].dtype == torch.uint8  # normalised on the device, after the transfer
    batch = dm.on_after_batch_transfer(dict(raw), 0)
    assert batch["keep"] is None and batch["image"].dtype == torch.float32
    selection = dm.on_the_fly_selection
    assert (selection.strategy.name, selection.keep_ratio, selection.governor.name) == ("topk", 0.25, str(governor_dir))
    keep, fallbacks = build_governor(selection, SPEC)(batch["image"])
    assert keep.shape == (8, 16) and torch.equal(keep, keep.sort(dim=1).values) and int(fallbacks) == 0

    scorer = load_governor(str(governor_dir))
    output = scorer(scorer.prepare(batch["image"], SPEC.mean, SPEC.std))
    assert output.grid == (4, 4)
    expected = select_topk(resample_scores(output.scores, (4, 4), (8, 8)), 16)
    assert torch.equal(keep, expected)


def test_unknown_governor_fails_at_setup_naming_the_key(tiny_synthetic):
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, selection="topk",
                          governor=GovernorConfig(name="no_such_governor_xyz"), data_spec=SPEC)
    dm.setup("fit")
    with pytest.raises(Exception, match=r"data\.init_args\.governor\.name"):
        build_governor(dm.on_the_fly_selection, SPEC)  # what JuicerCLIP.setup("fit") does


def test_training_on_the_fly_logs_kept_patch_pictures_with_evidence(tiny_synthetic, governor_dir, tiny_model_args, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_juicer.callbacks import KeptPatchPictures, RunSummary
    from lightning_juicer.models import JuicerCLIP

    model = JuicerCLIP(**{**tiny_model_args, "warmup_steps": 1})
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, batch_size=8, num_workers=0,
                          selection="topk", keep_ratio=0.5, governor=GovernorConfig(name=str(governor_dir)))
    logger = TensorBoardLogger(str(tmp_path), name="otf")
    trainer = L.Trainer(max_steps=4, logger=logger, callbacks=[KeptPatchPictures(every_n_steps=2), RunSummary()],
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    seen = []

    class Seen(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(batch["keep"].shape)  # the keep the training step trained on

    trainer.callbacks.append(Seen())
    trainer.fit(model, datamodule=dm)
    assert seen == [(8, 32)] * 4
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Images("train/kept_patches")] == [1, 2, 4]  # the first step, then every 2
    assert "train/class_evidence/text_summary" in events.Tags()["tensors"]
