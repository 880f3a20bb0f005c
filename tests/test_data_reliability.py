"""Regressions of issue 13's data points: empty keep lists, same-named shards, epoch coverage, 16-bit images,
mixed sidecar folders, unkeyable tar members and the full config key of governor errors."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import webdataset as wds
from PIL import Image

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.data.drops import DropCounter
from lightning_juicer.data.pipeline import batches_per_epoch, build_loader
from lightning_juicer.data.samples import load_rgb
from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.settings import GovernorConfig
from lightning_juicer.io.sidecar import SidecarRows, sidecar_path, write_sidecar
from lightning_juicer.io.embeddings import write_embeddings
from lightning_juicer.io.keeplist import read_keep_list, write_keep_list
from lightning_juicer.sieves.run import run_sieve
from tests.conftest import deadline

SPEC = DataSpec(image_size=32, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=8))


def jpeg(seed: int, size=(40, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder: Path, sizes: list[int], prefix: str = "", bad: int = 0) -> list[str]:
    """Shards ``00000.tar``... of ``sizes`` good samples (keys ``<prefix><shard>_<i>``) and ``bad`` corrupt ones each."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s, n in enumerate(sizes):
        url = str(folder / f"{s:05d}.tar")
        with wds.TarWriter(url) as sink:
            for i in range(n):
                sink.write({"__key__": f"{prefix}{s}_{i:03d}", "jpg": jpeg(s * 1000 + i), "txt": f"caption {i}".encode()})
            for i in range(bad):
                sink.write({"__key__": f"{prefix}{s}_bad{i}", "jpg": b"\xff\xd8 broken", "txt": b"broken"})
        urls.append(url)
    (folder / "sizes.json").write_text(json.dumps({f"{s:05d}.tar": n + bad for s, n in enumerate(sizes)}))
    return urls


def keys_of(dm: JuicerDataModule, loader) -> list[str]:
    keys = []
    for batch in loader:
        dm.on_after_batch_transfer(batch, 0)
        keys.extend(batch["key"])
    return keys


def datamodule(urls, **kwargs) -> JuicerDataModule:
    args = dict(batch_size=8, num_workers=0, selection="random", keep_ratio=0.5, data_spec=SPEC)
    dm = JuicerDataModule(train_shards=urls, **{**args, **kwargs})
    dm.setup("fit")
    return dm


# --- 1. empty keep lists, streams that can yield nothing ----------------------------------------------------------


@pytest.mark.parametrize("shards", [{}, {"00000.tar": [], "00001.tar": []}])
def test_an_empty_keep_list_is_refused_at_setup_naming_the_file(tmp_path, shards):
    urls = write_shards(tmp_path / "d", [8, 8])
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"format_version": 2, "sieve": "x", "shards": shards}))
    with deadline(60), pytest.raises(ConfigError, match=rf"data.init_args.keep_list: {keep} keeps no sample"):
        datamodule(urls, keep_list=str(keep))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stream_whose_every_sample_is_dropped_raises_instead_of_spinning(tmp_path, num_workers):
    urls = write_shards(tmp_path / "d", [0, 0], bad=3)
    dm = datamodule(urls, train_num_samples=16, num_workers=num_workers)
    with deadline(120), pytest.raises(ConfigError, match=r"gave no usable sample \(dropped: corrupt_image=6\)"):
        keys_of(dm, dm.train_dataloader())


def test_a_worker_whose_shards_have_nothing_kept_does_not_spin(tmp_path):
    """A keep list keeping samples of one shard only: the other shard is not read at all."""
    urls = write_shards(tmp_path / "d", [8, 8])
    write_keep_list(tmp_path / "k.json", "x", {}, [("00000.tar", f"0_{i:03d}") for i in range(8)], 16, 0.5)
    dm = datamodule(urls, keep_list=str(tmp_path / "k.json"), sampling="disjoint", num_workers=1)
    with deadline(120):
        keys = keys_of(dm, dm.train_dataloader())
    assert Counter(keys) == Counter(f"0_{i:03d}" for i in range(8))


# --- 2. keep lists keyed by shard identity -------------------------------------------------------------------------


def test_the_sieve_keeps_same_named_shards_of_two_folders_apart_and_training_follows(tmp_path):
    # img2dataset names shards and keys alike in every folder: the same key in a/00000.tar and b/00000.tar.
    urls = write_shards(tmp_path / "a", [6]) + write_shards(tmp_path / "b", [6])
    keys = [f"0_{i:03d}" for i in range(6)]
    for url, folder in zip(urls, ("a", "b")):
        x = np.random.default_rng(len(folder)).normal(size=(6, 4))
        write_embeddings(tmp_path / folder / "00000.emb.parquet", keys, {"image": x, "text": x},
                         {"shard": "00000.tar", "shard_url": url, "temperature": 0.1})
    embeddings = [str(tmp_path / f / "00000.emb.parquet") for f in ("a", "b")]
    run_sieve({"sieve": "random", "embeddings": embeddings, "out": str(tmp_path / "k.json"), "fraction": 0.5})
    keep = read_keep_list(tmp_path / "k.json")
    assert sorted(keep.shards) == ["a/00000.tar", "b/00000.tar"] and len(keep) == 6
    dm = datamodule(urls, keep_list=str(tmp_path / "k.json"), num_workers=0)
    assert dm._keep.kept == {urls[0]: keep.shards["a/00000.tar"], urls[1]: keep.shards["b/00000.tar"]}
    seen = Counter(keys_of(dm, dm.train_dataloader()))
    assert sum(seen.values()) == 8 and set(seen) == keep.shards["a/00000.tar"] | keep.shards["b/00000.tar"]
    # The list still applies when the data moved to another root.
    import shutil

    moved = [shutil.copytree(tmp_path / f, tmp_path / "moved" / "x" / f) / "00000.tar" for f in ("a", "b")]
    dm = datamodule([str(m) for m in moved], keep_list=str(tmp_path / "k.json"), num_workers=0)
    assert dm._keep.kept == {str(moved[0]): keep.shards["a/00000.tar"], str(moved[1]): keep.shards["b/00000.tar"]}


def test_a_keep_list_by_file_name_is_read_when_unambiguous_and_refused_when_not(tmp_path):
    urls = write_shards(tmp_path / "a", [6]) + write_shards(tmp_path / "b", [6])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format_version": 1, "sieve": "x", "shards": {"00000.tar": ["0_001", "0_002"]}}))
    assert datamodule(urls[:1], keep_list=str(old))._keep.kept == {urls[0]: {"0_001", "0_002"}}
    with pytest.raises(ConfigError, match=r"data.init_args.keep_list: .*old.json names shard 00000.tar, which matches "
                                          r"2 training shards .*; rerun the sieve"):
        datamodule(urls, keep_list=str(old))


def test_embeddings_of_two_same_named_shards_without_their_paths_are_refused(tmp_path):
    x = np.ones((2, 4))
    for folder in ("a", "b"):
        write_embeddings(tmp_path / folder / "00000.emb.parquet", ["k0", "k1"], {"image": x, "text": x},
                         {"shard": "00000.tar", "temperature": 0.1})
    files = [str(tmp_path / f / "00000.emb.parquet") for f in ("a", "b")]
    with pytest.raises(ConfigError, match="embeddings: two embeddings files are of shard 00000.tar"):
        run_sieve({"sieve": "random", "embeddings": files, "out": str(tmp_path / "k.json")})


# --- 7. epoch coverage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes, workers", [([24, 24, 24, 24], 2), ([16, 32, 8, 40], 2), ([40, 24, 16], 0)])
def test_a_disjoint_epoch_uses_every_sample_exactly_once_when_the_sizes_allow(tmp_path, sizes, workers):
    """Sizes allow it: each worker's samples are a multiple of the batch size (8). Default shuffle buffer (1000)."""
    urls = write_shards(tmp_path / "d", sizes)
    everything = Counter(f"{s}_{i:03d}" for s, n in enumerate(sizes) for i in range(n))
    dm = datamodule(urls, num_workers=workers)
    loader = dm.train_dataloader()
    assert len(loader) == sum(sizes) // 8
    orders = []
    with deadline(300):
        for _ in range(2):
            keys = keys_of(dm, loader)
            assert Counter(keys) == everything
            orders.append(keys)
    assert orders[0] != orders[1]  # a new order every epoch
    assert "repeated_in_epoch" not in dm.drops


def test_when_the_sizes_do_not_allow_only_the_counted_top_up_repeats(tmp_path):
    """1,055 samples as in the issue (1,000 + 55), batch 8: the epoch is 132 batches = 1,056 samples."""
    urls = write_shards(tmp_path / "d", [500, 27, 500, 28])
    dm = datamodule(urls, num_workers=2)
    with deadline(600):
        keys = keys_of(dm, dm.train_dataloader())
    seen = Counter(keys)
    assert len(keys) == batches_per_epoch(1055, 8, 1, 2) * 8 == 1056
    assert len(seen) >= 1055 - 2 * 7  # each worker may leave less than one batch of its pass unseen
    assert sum(seen.values()) - len(seen) == dm.drops["repeated_in_epoch"]  # every repeat is counted


def test_ranks_read_disjoint_shards_and_together_cover_the_data_once(tmp_path):
    urls = write_shards(tmp_path / "d", [16, 16, 16, 16])
    seen: Counter[str] = Counter()
    for rank in range(2):
        drops = DropCounter()
        loader = build_loader(
            urls, decode=lambda s: {"key": s["__key__"]}, collate=lambda b: {"key": [s["key"] for s in b]},
            drops=drops, batch_size=8, num_batches=batches_per_epoch(64, 8, 2, 0), num_workers=0, rank=rank,
            world_size=2, sampling="disjoint", seed=0, shuffle_buffer=1000, key="k", sizes=lambda url: 16,
        )
        seen.update(k for batch in loader for k in batch["key"])
    assert seen == Counter(f"{s}_{i:03d}" for s in range(4) for i in range(16))


# --- 5. 16-bit and float images ------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF")])
def test_high_bit_depth_grayscale_keeps_its_picture(mode, fmt):
    ramp = np.linspace(1000, 4000, 64 * 64).reshape(64, 64)  # a 12-bit-like range inside a wider container
    if mode == "F":
        image = Image.fromarray(ramp.astype(np.float32), mode="F")
    elif mode == "I":
        image = Image.fromarray(ramp.astype(np.int32))
    else:
        image = Image.frombytes(mode, (64, 64), ramp.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    rgb = np.asarray(load_rgb(encoded(image, fmt)), dtype=np.float64)
    assert rgb.shape == (64, 64, 3)
    assert rgb.min() == 0 and rgb.max() == 255  # stretched over its range, not clipped to white
    assert abs(rgb.mean() - 127.5) < 2
    assert np.all(np.diff(rgb[:, :, 0].ravel()) >= 0)  # still the ramp


def test_a_constant_16_bit_image_keeps_its_level_and_a_non_finite_one_is_corrupt():
    grey = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # 128 * 257
    assert set(np.asarray(load_rgb(encoded(grey, "PNG"))).ravel().tolist()) == {128}
    nan = Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F")
    with pytest.raises(ValueError, match="no finite pixel"):
        load_rgb(encoded(nan, "TIFF"))


# --- 6. every sidecar checked --------------------------------------------------------------------------------------


def test_a_sidecar_folder_mixing_two_governors_is_refused_naming_both_files(tmp_path):
    urls = write_shards(tmp_path / "d", [2, 2, 2])
    for i, url in enumerate(urls):
        rows = SidecarRows([f"{i}_000", f"{i}_001"], np.zeros((2, 16)), (4, 4), [[], []], [[], []])
        governor = "juicer-synthetic" if i < 2 else "vit_small_patch16_224.dino"
        write_sidecar(sidecar_path(url), rows, governor, {"image_size": [32, 32]})
    with pytest.raises(ConfigError) as error:
        datamodule(urls, selection="topk", scores="sidecar", governor=GovernorConfig(name="juicer-synthetic"),
                   num_workers=0)
    message = str(error.value)
    assert message.startswith("data.init_args.governor.name: sidecars ") and "\n" not in message
    assert str(sidecar_path(urls[0])) in message and str(sidecar_path(urls[2])) in message
    assert "vit_small_patch16_224.dino" in message


# --- 10. unkeyable members, the governor's config key --------------------------------------------------------------


def test_tar_members_without_a_key_are_counted_not_lost(tmp_path):
    url = str(tmp_path / "00000.tar")
    with wds.TarWriter(url) as sink:
        for i in range(8):
            sink.write({"__key__": f"good{i}", "jpg": jpeg(i), "txt": b"fine"})
    import tarfile

    with tarfile.open(url, "a") as tar:  # members webdataset cannot split into key + extension
        for name, data in ((r"...jpg", jpeg(99)), (r"...txt", b"dots"), (".jpg", jpeg(98))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dm = datamodule([url], train_num_samples=8)
    keys = keys_of(dm, dm.train_dataloader())
    assert Counter(keys) == Counter(f"good{i}" for i in range(8))
    assert dm.drops["bad_key"] == 2  # the ".." sample (2 members) and ".jpg"


def test_a_bad_on_the_fly_governor_is_named_by_its_full_training_key(tmp_path, tiny_model_args):
    import lightning as L

    from lightning_juicer.models import JuicerCLIP

    urls = write_shards(tmp_path / "d", [8])
    dm = JuicerDataModule(train_shards=urls, selection="topk", scores="on_the_fly", num_workers=0,
                          governor=GovernorConfig(name=str(tmp_path / "no_such_governor")))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^data.init_args.governor.name: "):
        trainer.fit(JuicerCLIP(**tiny_model_args), dm)  # the model builds the governor in setup("fit")
