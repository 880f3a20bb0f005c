"""Precomputed vision pass and sidecars: values, resume after a crash, bad input, refused mismatches, atomic writes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import timm
import torch
import webdataset as wds
import yaml
from PIL import Image

from lightning_juicer.data.samples import load_rgb
from lightning_juicer.synthetic import SHAPE_CLASSES, SyntheticConfig, prepare_synthetic
from lightning_juicer.errors import ConfigError
from lightning_juicer.governor.evidence import ClassHead
from lightning_juicer.governor.loading import load_governor_model
from lightning_juicer.governor.scoring import PatchScorer
from lightning_juicer.io.sidecar import (
    SidecarRows,
    check_sidecar,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from lightning_juicer.passes import vision
from lightning_juicer.passes.base import ShardData
from lightning_juicer.passes.vision import VisionPass, load_pass_governor, run_vision_pass
from lightning_juicer.passes.vision import vision_settings as to_config
from tests.conftest import REPO

SETTINGS = {"image_size": [64, 64], "patch_size": [8, 8], "top_k_classes": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three synthetic shards of 32 samples."""
    root = tmp_path_factory.mktemp("vision_pass") / "data"
    return prepare_synthetic(SyntheticConfig(root=str(root), num_train=96, samples_per_shard=32, num_val=16,
                                             eval_per_class=1, num_retrieval=5))


@pytest.fixture(scope="module")
def governor_dir(tmp_path_factory):
    """A tiny random 12-class timm ViT (64 px, 8 px patches) saved as a timm folder."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=64,
                              depth=2, num_heads=4, num_classes=12)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    folder = tmp_path_factory.mktemp("governor") / "tiny"
    timm.models.save_for_hf(model, folder)
    return folder


def _shards(data) -> list[str]:
    return sorted(str(p) for p in Path(data.train_shards).parent.glob("*.tar"))


def _cfg(data, governor_dir, sidecar_dir, **overrides) -> dict:
    cfg = {
        "shards": data.train_shards,
        "sidecar_dir": str(sidecar_dir),
        "governor": {"name": str(governor_dir), "head": {"classnames": list(SHAPE_CLASSES), "activation": "softmax"}},
        "batch_size": 12,
        "num_workers": 0,
        "accelerator": "cpu",
        "devices": 1,
        "progress": False,
    }
    return {**cfg, **overrides}


def _shard_samples(url: str) -> list[dict]:
    return list(wds.tarfile_samples(iter([{"url": url}])))


def test_pass_writes_one_sidecar_per_shard_with_the_governors_scores_and_classes(data, governor_dir, tmp_path):
    manifest = run_vision_pass(_cfg(data, governor_dir, tmp_path / "side", num_workers=2))
    assert manifest["totals"] == {"shards": 3, "shards_written": 3, "shards_existing": 0, "shards_failed": 0,
                                  "samples_in": 96, "samples_written": 96, "skipped": {}}
    assert Path(manifest["manifest"]) == tmp_path / "side" / "vision_pass.manifest.json"
    assert not list((tmp_path / "side").glob("*.jsonl"))

    model = load_governor_model(str(governor_dir))
    scorer, head = PatchScorer(model), ClassHead.from_model(model, list(SHAPE_CLASSES), activation="softmax")
    transform = open_clip.image_transform(64, is_train=False, mean=scorer.mean, std=scorer.std,
                                          interpolation="bicubic", resize_mode="shortest")
    for url in _shards(data):
        table = read_sidecar(sidecar_path(url, tmp_path / "side"))
        samples = _shard_samples(url)
        assert table.keys == [s["__key__"] for s in samples]
        assert table.grid == (8, 8) and table.scores.dtype == np.float16 and table.scores.shape == (32, 64)
        assert table.extra["counts"] == {"in": 32, "written": 32, "skipped": {}}
        images = torch.stack([transform(load_rgb(s["jpg"])) for s in samples])
        with torch.no_grad():
            out = scorer(images)
            probs, idx = head(out.cls).topk(5, dim=-1)
        expected = out.scores.numpy()
        np.testing.assert_allclose(table.scores.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        assert np.abs(expected).max() > 0.5  # the comparison is not between near-zero scores
        entry = table.get(samples[3]["__key__"])
        assert entry.classes == [SHAPE_CLASSES[i] for i in idx[3].tolist()] and entry.caption is None
        np.testing.assert_allclose(entry.probs, probs[3].numpy(), rtol=1e-5, atol=1e-6)
        assert table.get("no-such-key") is None


def test_killed_pass_resumes_to_identical_sidecars_and_skips_finished_shards(data, governor_dir, tmp_path, monkeypatch):
    run_vision_pass(_cfg(data, governor_dir, tmp_path / "clean"))

    real_write, calls = vision.write_sidecar, []

    def crash_on_second_shard(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(vision, "write_sidecar", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_vision_pass(_cfg(data, governor_dir, tmp_path / "resumed"))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir() if p.suffix == ".parquet") == ["00000.juice.parquet"]
    assert not list((tmp_path / "resumed").glob("*.tmp-*"))

    manifest = run_vision_pass(_cfg(data, governor_dir, tmp_path / "resumed"))
    assert [s["status"] for s in manifest["shards"]] == ["existing", "written", "written"]
    assert manifest["totals"]["samples_written"] == 96 and manifest["run"]["samples_scored"] == 64
    for url in _shards(data):
        clean, resumed = sidecar_path(url, tmp_path / "clean"), sidecar_path(url, tmp_path / "resumed")
        assert clean.read_bytes() == resumed.read_bytes()

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "resumed").glob("*.parquet")}
    manifest = run_vision_pass(_cfg(data, governor_dir, tmp_path / "resumed"))
    assert manifest["totals"]["shards_existing"] == 3 and manifest["run"]["samples_scored"] == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def _write_tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
    return str(path)


def test_corrupt_images_are_counted_skips_and_unreadable_shards_fail_without_a_sidecar(data, governor_dir, tmp_path):
    samples = _shard_samples(_shards(data)[0])
    samples[3]["jpg"] = samples[3]["jpg"][: len(samples[3]["jpg"]) // 3]
    samples[5]["jpg"] = b"not a jpeg at all"
    del samples[7]["jpg"]
    bad = _write_tar(tmp_path / "bad.tar", samples)
    good = _write_tar(tmp_path / "good.tar", _shard_samples(_shards(data)[1]))
    raw = Path(good).read_bytes()
    Path(tmp_path / "truncated.tar").write_bytes(raw[: len(raw) // 2 + 100])

    cfg = _cfg(data, governor_dir, tmp_path / "side", shards=[bad, str(tmp_path / "truncated.tar")])
    manifest = run_vision_pass(cfg)
    bad_record, truncated_record = manifest["shards"]
    assert bad_record["status"] == "written" and bad_record["in"] == 32 and bad_record["written"] == 29
    assert bad_record["skipped"] == {"corrupt_image": 2, "no_image": 1}
    table = read_sidecar(tmp_path / "side" / "bad.juice.parquet")
    assert len(table) == 29 and samples[3]["__key__"] not in table and samples[8]["__key__"] in table
    assert truncated_record["status"] == "failed" and truncated_record["written"] == 0
    assert truncated_record["error"].startswith("ReadError: unexpected end of data at byte ")
    assert not (tmp_path / "side" / "truncated.juice.parquet").exists()
    assert manifest["totals"]["shards_failed"] == 1 and manifest["totals"]["skipped"]["corrupt_image"] == 2


def test_device_decode_path_scores_like_the_worker_path_and_counts_the_same_skips(data, governor_dir, tmp_path,
                                                                                  monkeypatch):
    """Issue 15: decode: auto on a GPU hands complete JPEGs to the device (here the CPU stands in for it:
    torchvision's decode_jpeg on the CPU, the same code path as nvjpeg) and resizes them there."""
    samples = _shard_samples(_shards(data)[0])
    for sample in samples:  # web-like: larger than the governor's 64 px and not square, so both paths resize + crop
        image, out = load_rgb(sample["jpg"]).resize((150, 112), Image.BICUBIC), io.BytesIO()
        image.save(out, "JPEG", quality=92)
        sample["jpg"] = out.getvalue()
    samples[3]["jpg"] = samples[3]["jpg"][: len(samples[3]["jpg"]) // 3]  # truncated: decoded (and refused) on the host
    samples[5]["jpg"] = b"\xff\xd8\xff" + b"\x00garbage" * 40 + b"\xff\xd9"  # a complete-looking JPEG neither decodes
    samples[6]["jpg"] = b"not a jpeg at all"
    png = io.BytesIO()
    load_rgb(samples[8].pop("jpg")).save(png, "PNG")
    samples[8]["png"] = png.getvalue()  # not a JPEG: decoded in the worker, its row assembled with the device's
    bad = _write_tar(tmp_path / "bad.tar", samples)
    cfg = _cfg(data, governor_dir, tmp_path / "workers", shards=[bad, _shards(data)[1]])  # the second: 64 px as made
    on_workers = run_vision_pass(cfg)

    handed, real_decode = [], vision.decode_on_device
    monkeypatch.setattr(vision, "gpu_decode", lambda choice, device: choice != "cpu")
    monkeypatch.setattr(vision, "decode_on_device", lambda datas, device: handed.extend(datas) or real_decode(datas, device))
    transferred, real_assemble = [], vision.GovernorPredictor.decode_jpegs

    def assemble(self, batch):
        transferred.append((len(batch["image"]), len(batch.get("jpeg_rows") or []), len(batch["key"])))
        return real_assemble(self, batch)

    monkeypatch.setattr(vision.GovernorPredictor, "decode_jpegs", assemble)
    on_device = run_vision_pass({**cfg, "sidecar_dir": str(tmp_path / "device"), "batch_size": 7})
    assert len(handed) == 32 + 32 - 3  # every complete JPEG (the garbage one too), not the truncated one, text or PNG
    # the batch's image tensor holds only the rows the workers decoded: none for the JPEGs the device decodes
    assert all(image + jpeg == n for image, jpeg, n in transferred) and sum(t[0] for t in transferred) == 1
    for a, b in zip(on_workers["shards"], on_device["shards"]):
        assert {k: a[k] for k in ("in", "written", "skipped")} == {k: b[k] for k in ("in", "written", "skipped")}
    assert on_device["shards"][0]["skipped"] == {"corrupt_image": 3} and on_device["shards"][0]["written"] == 29
    for url in (bad, _shards(data)[1]):
        workers = read_sidecar(sidecar_path(url, tmp_path / "workers"))
        device = read_sidecar(sidecar_path(url, tmp_path / "device"))
        assert device.keys == workers.keys and samples[5]["__key__"] not in device.keys
        a, b = workers.scores.astype(np.float32), device.scores.astype(np.float32)
        # same geometry; the pixels differ only by the resize implementation (PIL vs torch bicubic): measured
        # 0.15 % of the mean |score| and 98 % of the top-8 patches shared on the 150 x 112 shard
        assert np.abs(a - b).mean() <= 0.005 * np.abs(a).mean(), (np.abs(a - b).mean(), np.abs(a).mean())
        assert (np.argsort(-a, axis=1)[:, :8] == np.argsort(-b, axis=1)[:, :8]).mean() >= 0.9

    monkeypatch.undo()
    with pytest.raises(ConfigError, match="^decode: gpu needs a CUDA device"):
        run_vision_pass({**cfg, "sidecar_dir": str(tmp_path / "gpu"), "decode": "gpu"})


def _rows(n: int = 3, grid: tuple[int, int] = (8, 8)) -> SidecarRows:
    rng = np.random.default_rng(0)
    return SidecarRows([f"k{i}" for i in range(n)], rng.normal(size=(n, grid[0] * grid[1])), grid,
                       [["circle", "star"]] * n, rng.random((n, 2)).astype(np.float32))


def test_check_sidecar_refuses_another_governor_grid_or_settings(data, governor_dir, tmp_path):
    path = write_sidecar(tmp_path / "00000.juice.parquet", _rows(), "vit_small_patch16_224.dino", SETTINGS)
    info = check_sidecar(path, "vit_small_patch16_224.dino", (8, 8), {"top_k_classes": 2})
    assert info.num_rows == 3 and info.grid == (8, 8)
    with pytest.raises(ConfigError) as err:
        check_sidecar(path, "vit_base_patch14_dinov2", (14, 14))
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.init_args.governor:")
    assert "vit_small_patch16_224.dino with grid 8x8" in message and "vit_base_patch14_dinov2 / 14x14" in message
    with pytest.raises(ConfigError, match="grid 8x8.*/ 4x4"):
        check_sidecar(path, grid=(4, 4))
    with pytest.raises(ConfigError, match="top_k_classes=2.*top_k_classes=5"):
        check_sidecar(path, settings={"top_k_classes": 5})
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(ConfigError, match="cannot be read"):
        check_sidecar(tmp_path / "junk.parquet")

    # The pass refuses a sidecar folder written with other settings, unless told to overwrite.
    side = tmp_path / "side"
    write_sidecar(sidecar_path(_shards(data)[0], side), _rows(), "some_other_governor", SETTINGS)
    with pytest.raises(ConfigError, match="^governor.name: sidecar .* some_other_governor"):
        run_vision_pass(_cfg(data, governor_dir, side, shards=_shards(data)[0]))
    manifest = run_vision_pass(_cfg(data, governor_dir, side, shards=_shards(data)[0], on_mismatch="overwrite"))
    assert manifest["totals"]["shards_written"] == 1
    assert read_sidecar(sidecar_path(_shards(data)[0], side)).governor == str(governor_dir.resolve())


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "00000.juice.parquet"
    write_sidecar(path, _rows(2), "gov", SETTINGS)
    before = path.read_bytes()

    def write_half_then_fail(table, where, **kwargs):
        where.write(b"PAR1 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_sidecar(path, _rows(5), "gov", SETTINGS)
    monkeypatch.undo()
    assert path.read_bytes() == before and len(read_sidecar(path)) == 2
    with pytest.raises(ValueError, match="shape"):
        write_sidecar(tmp_path / "new.juice.parquet", SidecarRows(["a"], np.zeros((1, 10)), (8, 8), [[]], [[]]),
                      "gov", SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.juice.parquet"]


def test_sidecar_round_trip_paths_and_evidence(tmp_path):
    rows = _rows(4)
    rows.captions = ["a red star", None, "x", None]
    path = write_sidecar(tmp_path / "s.juice.parquet", rows, "gov", SETTINGS, {"counts": {"in": 4}})
    table = read_sidecar(path)
    assert table.keys == rows.keys and table.settings["grid"] == [8, 8] and table.extra == {"counts": {"in": 4}}
    np.testing.assert_array_equal(table.scores, rows.scores.astype(np.float16))
    assert table["k0"].caption == "a red star" and table.get("k1").caption is None and "k3" in table
    again = table.rows()
    again.captions = ["juiced"] * 4
    write_sidecar(path, again, table.governor, table.settings)
    assert read_sidecar(path)["k2"].caption == "juiced"
    np.testing.assert_array_equal(read_sidecar(path).scores, table.scores)

    entry = table.entry(0)._replace(classes=["dog", "cat", "cow"], probs=np.array([0.1, 0.8, 0.75], np.float32))
    assert [c for c, _ in entry.evidence(0.7, 3)] == ["cat", "cow"] and entry.evidence(0.7, 1)[0][0] == "cat"

    assert sidecar_path("/data/cc3m/00017.tar") == Path("/data/cc3m/00017.juice.parquet")
    assert sidecar_path("s3://bucket/x/00017.tar", "/side") == Path("/side/00017.juice.parquet")
    assert sidecar_path("pipe:aws s3 cp s3://b/00018.tar -", "/side") == Path("/side/00018.juice.parquet")
    with pytest.raises(ConfigError, match="^sidecar_dir:"):
        sidecar_path("s3://bucket/x/00017.tar")


def test_ranks_take_whole_shards_round_robin(data, governor_dir, tmp_path):
    shard_pass = VisionPass(to_config(_cfg(data, governor_dir, tmp_path)))
    jobs = shard_pass.plan()
    shard_pass.load_models()
    taken = []
    for rank in range(2):
        module = ShardData(shard_pass, jobs)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2,
                                         strategy=SimpleNamespace(root_device=torch.device("cpu")))
        module.setup("predict")
        taken.append([job.index for job in module.pending])
        assert module.num_batches == 3 * len(module.pending)  # ceil(32 / 12) batches per shard
    assert taken == [[0, 2], [1]]


@pytest.mark.skipif(os.environ.get("JUICER_SKIP_DDP") == "1", reason="2-process test disabled")
def test_command_line_two_process_pass(data, governor_dir, tmp_path):
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(SHAPE_CLASSES))
    command = [
        sys.executable, "preprocess/vision_pass.py", "--config", "configs/preprocess/vision.yaml",
        "--shards", data.train_shards, "--sidecar_dir", str(tmp_path / "side"), "--governor.name", str(governor_dir),
        "--governor.head.classnames", str(names), "--governor.head.activation", "softmax", "--accelerator", "cpu",
        "--devices", "2", "--strategy", "ddp", "--num_workers", "0", "--batch_size", "16", "--progress", "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 written" in result.stdout and "96 in sidecars" in result.stdout
    manifest = json.loads((tmp_path / "side" / "vision_pass.manifest.json").read_text())
    assert manifest["run"]["ranks_reported"] == [0, 1]
    assert [s["rank"] for s in manifest["shards"]] == [0, 1, 0]


def test_evidence_activation_is_the_recorded_one_and_a_closed_set_head_needs_an_explicit_opt_in(data, governor_dir):
    """Issue 12: no softmax forced by default; a head that cannot say 'none of these' is refused unless asked for."""
    shipped = load_pass_governor(to_config({"shards": data.train_shards, "governor": {"name": "juicer-synthetic"}}))
    assert shipped.head.activation == "sigmoid" and shipped.settings["head"]["activation"] == "sigmoid"
    head = {"classnames": list(SHAPE_CLASSES)}
    cfg = {"shards": data.train_shards, "governor": {"name": str(governor_dir), "head": head}}
    with pytest.raises(ConfigError, match=r"^governor\.head\.activation: .* records no activation") as error:
        load_pass_governor(to_config(cfg))
    assert "\n" not in str(error.value) and "governor.head.kind=none" in str(error.value)
    opted_head = {**head, "activation": "softmax"}
    opted = load_pass_governor(to_config({**cfg, "governor": {"name": str(governor_dir), "head": opted_head}}))
    assert opted.head.activation == "softmax" and opted.settings["head"]["activation"] == "softmax"
    off = load_pass_governor(to_config({**cfg, "governor": {**cfg["governor"], "head": {"kind": "none"}}}))
    assert off.head is None and off.settings["head"] == {"kind": "none"}
    yaml_default = yaml.safe_load((REPO / "configs" / "preprocess" / "vision.yaml").read_text())["governor"]["head"]["activation"]
    assert yaml_default is None
