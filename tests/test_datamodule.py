"""JuicerDataModule on real shards: decoding, drops by reason, batch contract, epoch length per rank."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.data.pipeline import batches_per_epoch
from lightning_juicer.io.shards import count_samples, expand_shards
from lightning_juicer.errors import ConfigError

SPEC = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def rgb(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (80, 96, 3), dtype=np.uint8))


def write_shard(path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.fixture()
def messy_shards(tmp_path):
    """Two shards: 6 usable samples (incl. grayscale JPEG, RGBA PNG) and 4 broken ones."""
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    good = [
        {"__key__": "good0", "jpg": encode(rgb(0), "JPEG"), "txt": b"a red star"},
        {"__key__": "good1", "jpg": encode(rgb(1), "JPEG"), "txt": b"a blue circle"},
        {"__key__": "gray", "jpg": encode(rgb(2).convert("L"), "JPEG"), "txt": b"a gray thing"},
        {"__key__": "rgba", "png": encode(rgba, "PNG"), "txt": b"a transparent square"},
        {"__key__": "good4", "jpg": encode(rgb(4), "JPEG"), "txt": "caf\u00e9 photo".encode()},
        {"__key__": "good5", "jpg": encode(rgb(5), "JPEG"), "txt": b"a green ring"},
    ]
    bad = [
        {"__key__": "corrupt", "jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "txt": b"broken"},
        {"__key__": "nocaption", "jpg": encode(rgb(7), "JPEG")},
        {"__key__": "emptycaption", "jpg": encode(rgb(8), "JPEG"), "txt": b"   "},
        {"__key__": "latin1", "jpg": encode(rgb(9), "JPEG"), "txt": "caf\u00e9".encode("latin-1")},
    ]
    write_shard(tmp_path / "00000.tar", good[:3] + bad[:2])
    write_shard(tmp_path / "00001.tar", good[3:] + bad[2:])
    (tmp_path / "sizes.json").write_text(json.dumps({"00000.tar": 5, "00001.tar": 5}))
    return str(tmp_path / "{00000..00001}.tar")


def run_epoch(dm: JuicerDataModule, loader) -> list[dict]:
    batches = []
    for batch in loader:
        batches.append(dm.on_after_batch_transfer(batch, 0))
    return batches


@pytest.mark.parametrize("num_workers", [0, 2])
def test_drops_are_counted_by_reason_and_the_rest_is_trained_on(messy_shards, num_workers):
    dm = JuicerDataModule(
        train_shards=messy_shards, train_num_samples=6, batch_size=2, num_workers=num_workers,
        shuffle_buffer=0, selection="random", keep_ratio=0.5, data_spec=SPEC,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 3 + (num_workers == 2)  # rounded up to a multiple of the workers
    batches = run_epoch(dm, loader)
    assert len(batches) == len(loader)
    keys = [k for b in batches for k in b["key"]]
    assert set(keys) == {"good0", "good1", "gray", "rgba", "good4", "good5"}
    # one pass uses each good sample once; a worker whose pass is short of its batches repeats samples, counted
    assert dm.drops["repeated_in_epoch"] == len(keys) - 6
    assert set(dm.drops) - {"repeated_in_epoch"} <= {"corrupt_image", "no_caption", "bad_caption_encoding"}
    if num_workers == 2:  # each worker read its whole pass, so every broken sample was met and counted
        assert {r: dm.drops[r] for r in ("corrupt_image", "no_caption", "bad_caption_encoding")} == {
            "corrupt_image": 1, "no_caption": 2, "bad_caption_encoding": 1}
    for batch in batches:
        assert set(batch) == {"image", "keep", "text", "key"}
        assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert batch["text"].shape == (2, 16) and batch["text"].dtype == torch.long
        keep = batch["keep"]
        assert keep.shape == (2, 32) and keep.dtype == torch.long
        assert torch.equal(keep, keep.sort(dim=1).values)
        assert all(len(set(row.tolist())) == 32 for row in keep) and keep.min() >= 0 and keep.max() < 64


def test_rgba_is_composited_on_white_and_grayscale_expanded(messy_shards):
    dm = JuicerDataModule(train_shards=messy_shards, train_num_samples=6, batch_size=6, num_workers=0,
                          shuffle_buffer=0, selection="full", data_spec=SPEC)
    dm.setup("fit")
    batch = run_epoch(dm, dm.train_dataloader())[0]
    assert batch["keep"] is None
    mean, std = torch.tensor(SPEC.mean)[:, None, None], torch.tensor(SPEC.std)[:, None, None]
    pixels = {k: img * std + mean for k, img in zip(batch["key"], batch["image"])}
    assert torch.allclose(pixels["rgba"], torch.ones_like(pixels["rgba"]), atol=1e-2)
    gray = pixels["gray"]
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(gray[1], gray[2], atol=1e-6)


def test_every_rank_runs_the_same_number_of_batches_on_uneven_shards(tiny_synthetic):
    urls = expand_shards(tiny_synthetic.train_shards, "k")[:3]  # 3 shards over 2 ranks: 2 + 1
    counts = []
    for rank in range(2):
        dm = JuicerDataModule(train_shards=urls, train_num_samples=192, batch_size=16, num_workers=0, data_spec=SPEC)
        dm.setup("fit")
        dm.trainer = None
        from lightning_juicer.data import datamodule as dm_module

        loader = dm_module.build_loader(
            urls, decode=lambda s: {"key": s["__key__"], "image": torch.zeros(3, 64, 64), "caption": "x"},
            collate=lambda b: {"key": [s["key"] for s in b]}, drops=dm_module.DropCounter(), batch_size=16,
            num_batches=batches_per_epoch(192, 16, 2, 0), num_workers=0, rank=rank, world_size=2,
            sampling="disjoint", seed=0, shuffle_buffer=0, key="k",
        )
        keys = [k for batch in loader for k in batch["key"]]
        counts.append((len(loader), len(keys) // 16, {k[:5] for k in keys}))
    assert counts[0][0] == counts[1][0] == counts[0][1] == counts[1][1] == math.ceil(192 / 32)
    assert counts[0][2].isdisjoint(counts[1][2])  # disjoint shards per rank


def test_sample_counts_from_sizes_json_and_img2dataset_stats(tmp_path):
    for i, n in enumerate((10, 7)):
        write_shard(tmp_path / f"{i:05d}.tar", [])
        (tmp_path / f"{i:05d}_stats.json").write_text(json.dumps({"count": n + 1, "successes": n}))
    urls = expand_shards(str(tmp_path / "{00000..00001}.tar"), "k")
    assert count_samples(urls) == 17
    (tmp_path / "sizes.json").write_text(json.dumps({"00000.tar": 3, "00001.tar": 4}))
    assert count_samples(urls) == 7
    assert count_samples(["pipe:curl -s http://x/00000.tar"]) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_ratio": 0.0}, "data.init_args.keep_ratio: 0.0 is outside (0, 1]"),
        ({"keep_ratio": 1.5}, "data.init_args.keep_ratio: 1.5 is outside (0, 1]"),
        ({"train_shards": "/nonexistent/{000..002}.tar"}, "data.init_args.train_shards: shard file not found"),
        ({"train_shards": []}, "data.init_args.train_shards: the shard list is empty"),
        ({"train_shards": ""}, "data.init_args.train_shards: the shard list is empty"),
        ({"selection": "best"}, "data.init_args.selection"),
    ],
)
def test_bad_data_config_fails_at_construction_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JuicerDataModule(**kwargs)


def test_too_few_shards_for_disjoint_reading_is_refused(messy_shards):
    dm = JuicerDataModule(train_shards=messy_shards, train_num_samples=6, batch_size=2, num_workers=3, data_spec=SPEC)
    dm.setup("fit")
    with pytest.raises(ConfigError, match="sampling resampled"):
        dm.train_dataloader()
    dm.sampling = "resampled"
    assert len(dm.train_dataloader()) == 3


def test_validate_without_held_out_shards_is_a_one_line_error(tiny_synthetic):
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, data_spec=SPEC)
    for stage in ("validate", "test"):
        with pytest.raises(ConfigError, match=rf"^data.init_args.val_shards: `{stage}` has no held-out shards"):
            dm.setup(stage)
    dm.setup("fit")  # training on real shards without validation stays allowed
    assert dm.val_dataloader() == []


def test_the_drop_ledger_refuses_unknown_reasons_merges_and_rate_limits_its_warnings(caplog):
    from lightning_juicer.data.drops import DropCounter, DropLedger

    with pytest.raises(ValueError, match="unknown drop reason 'corupt_image'"):
        DropLedger()["corupt_image"] += 1
    total = DropLedger.total([DropLedger(corrupt_image=2), {"corrupt_image": 1, "nonfinite_loss": 8, "nonfinite_scores": 3}])
    assert total == {"corrupt_image": 3, "nonfinite_loss": 8, "nonfinite_scores": 3}
    assert total.dropped == {"corrupt_image": 3, "nonfinite_loss": 8} and total.fallbacks == {"nonfinite_scores": 3}
    counter = DropCounter()
    with caplog.at_level("WARNING", logger="lightning_juicer.data.drops"):
        for i in range(2500):
            counter.drop("not_in_keep_list", f"k{i}")
    assert counter.total["not_in_keep_list"] == 2500 and counter.take() == {"not_in_keep_list": 2500}
    assert len(caplog.records) == 10 + 2  # the first ten, then at 100 and at 1,000 (not every 1,000th)
    assert "dropped 1000 samples as not_in_keep_list" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_the_worker_ships_uint8_and_the_device_side_normalisation_is_open_clips_transform_exactly(messy_shards,
                                                                                                   resize_mode):
    """Issue 15: workers decode, resize and crop to uint8 (a quarter of the bytes to copy) and the DataModule
    normalises after the transfer; the model sees bit for bit what open_clip's eval transform makes."""
    from lightning.pytorch.plugins.precision import HalfPrecision

    from lightning_juicer.io.decode import DraftedDecoder

    spec = DataSpec(image_size=64, patch_size=8, tokenizer=SPEC.tokenizer, resize_mode=resize_mode)
    dm = JuicerDataModule(train_shards=messy_shards, train_num_samples=6, batch_size=3, num_workers=2,
                          shuffle_buffer=0, selection="full", data_spec=spec)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))  # through a worker process and shared memory
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (3, 3, 64, 64)
    batch = dm.on_after_batch_transfer(dict(raw), 0)
    assert batch["image"].dtype == torch.float32 and batch["image"].is_contiguous()
    sources = {}
    for url in expand_shards(messy_shards, "shards"):
        for sample in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()):
            sources[sample["__key__"]] = sample.get("jpg", sample.get("png"))
    decode = DraftedDecoder(spec.pixel_transform())  # the workers' decoder: the same picture on both sides
    for key, image in zip(batch["key"], batch["image"]):
        assert torch.equal(image, spec.image_transform()(decode(sources[key])))
    dm.trainer = type("T", (), {"precision_plugin": HalfPrecision("bf16-true")})()  # the inputs a bf16-true run gets
    assert dm.on_after_batch_transfer(dict(raw), 0)["image"].dtype == torch.bfloat16


def test_raw_uint8_batches_given_to_the_model_without_the_datamodule_are_a_one_line_error(messy_shards,
                                                                                          tiny_model_args):
    import lightning as L

    from lightning_juicer.models import JuicerCLIP

    model = JuicerCLIP(**tiny_model_args)
    dm = JuicerDataModule(train_shards=messy_shards, train_num_samples=6, batch_size=3, num_workers=0,
                          shuffle_buffer=0, selection="full", data_spec=model.data_spec())
    dm.setup("fit")
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"^batch image: uint8 pixels reached the model .*datamodule=dm"):
        trainer.fit(model, train_dataloaders=dm.train_dataloader())  # the loader alone: nothing normalises
