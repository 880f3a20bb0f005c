from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_juicer.synthetic import (
    COLORS,
    SHAPE_CLASSES,
    SyntheticConfig,
    add_caption_noise,
    clean_caption,
    decode_mask,
    encode_mask,
    is_generated,
    prepare_synthetic,
    render_scene,
    synthetic_paths,
)

TINY = dict(num_train=30, samples_per_shard=12, num_val=6, eval_per_class=2, num_retrieval=4)


def _cfg(root: Path, **kw) -> SyntheticConfig:
    return SyntheticConfig(root=str(root), **{**TINY, **kw})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    prepare_synthetic(_cfg(root))
    return root


def _scenes(n: int, seed: int = 123) -> list[tuple[Image.Image, list[dict]]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out.append(render_scene(rng, 64, int(rng.integers(1, 4))))
    return out


def test_determinism(generated, tmp_path):
    prepare_synthetic(_cfg(tmp_path / "b"))
    a, b = _files(generated), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        if name != "dataset.json":
            assert a[name] == b[name], name
    ma, mb = (json.loads(x["dataset.json"]) for x in (a, b))
    ma["config"].pop("root"), mb["config"].pop("root")
    assert ma == mb

    prepare_synthetic(_cfg(tmp_path / "c", seed=1))
    c = _files(tmp_path / "c")
    assert c["train/00000.tar"] != a["train/00000.tar"]
    assert c["eval/retrieval/karpathy_test.json"] != a["eval/retrieval/karpathy_test.json"]


def test_samples_independent_of_shard_layout(generated, tmp_path):
    prepare_synthetic(_cfg(tmp_path / "d", samples_per_shard=7))
    paths_a, paths_d = synthetic_paths(generated), synthetic_paths(tmp_path / "d")

    def jpgs(p) -> list[bytes]:
        shards = sorted(Path(p.train_shards).parent.glob("*.tar"))
        return [data for s in shards for name, data in sorted(_tar_members(s).items()) if name.endswith(".jpg")]

    assert jpgs(paths_a) == jpgs(paths_d)


def test_layout(generated):
    cfg = _cfg(generated)
    paths = synthetic_paths(generated)
    assert is_generated(generated)
    assert paths.root == generated.resolve()
    n_shards = math.ceil(cfg.num_train / cfg.samples_per_shard)
    assert paths.train_shards == f"{generated.resolve()}/train/{{00000..{n_shards - 1:05d}}}.tar"
    assert paths.val_shards == f"{generated.resolve()}/val/{{00000..00000}}.tar"

    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        split_dir = generated / split
        shards = sorted(split_dir.glob("*.tar"))
        assert len(shards) == math.ceil(count / cfg.samples_per_shard)
        sizes = json.loads((split_dir / "sizes.json").read_text())
        assert sizes == {s.name: len(_tar_members(s)) // 3 for s in shards}
        assert sum(sizes.values()) == count
        for shard_idx, shard in enumerate(shards):
            stats = json.loads((split_dir / f"{shard.stem}_stats.json").read_text())
            assert stats["count"] == stats["successes"] == sizes[shard.name]
            members = _tar_members(shard)
            assert list(members) == sorted(members)
            keys = sorted({name.split(".")[0] for name in members})
            assert set(members) == {f"{k}.{e}" for k in keys for e in ("jpg", "txt", "json")}
            for i, key in enumerate(keys):
                assert re.fullmatch(r"\d{9}", key) and int(key) == shard_idx * 10**4 + i
                img = Image.open(io.BytesIO(members[f"{key}.jpg"]))
                assert img.size == (cfg.image_size, cfg.image_size) and img.mode == "RGB"
                meta = json.loads(members[f"{key}.json"])
                text = members[f"{key}.txt"].decode("utf-8")
                assert text and meta["caption"] == text and meta["key"] == key
                assert 1 <= len(meta["objects"]) <= cfg.max_objects
                for obj in meta["objects"]:
                    assert obj["shape"] in SHAPE_CLASSES and obj["color"] in COLORS
                    assert decode_mask(obj["mask"]).shape == (cfg.image_size, cfg.image_size)

    classes = [d.name for d in sorted(paths.zeroshot_dir.iterdir()) if d.is_dir()]
    assert classes == sorted(SHAPE_CLASSES)
    assert paths.classnames_file.read_text().split("\n")[:-1] == classes
    for name in classes:
        images = sorted((paths.zeroshot_dir / name).iterdir())
        assert [p.name for p in images] == [f"{name}_{i:04d}.jpg" for i in range(cfg.eval_per_class)]
        assert Image.open(images[0]).size == (cfg.image_size, cfg.image_size)

    karpathy = json.loads(paths.retrieval_json.read_text())
    assert karpathy["dataset"] == "synthetic" and len(karpathy["images"]) == cfg.num_retrieval
    sentids = []
    for entry in karpathy["images"]:
        assert entry["split"] == "test" and len(entry["sentences"]) == 5
        assert (paths.retrieval_json.parent / entry["filepath"] / entry["filename"]).is_file()
        assert len({s["raw"] for s in entry["sentences"]}) == 5
        for s in entry["sentences"]:
            assert s["tokens"] and s["imgid"] == entry["imgid"]
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        sentids += entry["sentids"]
    assert len(set(sentids)) == len(sentids)
    assert not list(generated.parent.glob("*.tmp-*"))


def test_noise_rates():
    counts = {k: 0 for k in ("misspelling", "repeat", "junk", "wrong_color", "unmentioned")}
    n, multi = 1000, 0
    for i in range(n):
        rng = np.random.default_rng([7, i])
        k = int(rng.integers(1, 4))
        shapes = [SHAPE_CLASSES[(i + j) % len(SHAPE_CLASSES)] for j in range(k)]
        colors = [list(COLORS)[(i * 3 + j) % len(COLORS)] for j in range(k)]
        objects = [{"shape": s, "color": c} for s, c in zip(shapes, colors)]
        clean = clean_caption(objects, rng)
        noisy, applied = add_caption_noise(clean, objects, rng, 0.3)
        assert noisy.strip() and len(set(applied)) == len(applied)
        multi += k >= 2
        if k == 1:
            assert "unmentioned" not in applied
        for name in applied:
            counts[name] += 1
    for name in ("misspelling", "repeat", "junk", "wrong_color"):
        assert abs(counts[name] / n - 0.3) < 0.06, (name, counts[name])
    assert abs(counts["unmentioned"] / multi - 0.3) < 0.07, counts["unmentioned"]


def test_noise_semantics():
    objects = [{"shape": "star", "color": "red"}, {"shape": "circle", "color": "blue"}]
    for i in range(200):
        rng = np.random.default_rng([3, i])
        clean = clean_caption(objects, rng)
        assert all(f"{o['color']} {o['shape']}" in clean for o in objects)
        assert add_caption_noise(clean, objects, rng, 0.0) == (clean, [])
        noisy, applied = add_caption_noise(clean, objects, rng, 1.0)
        assert set(applied) == {"misspelling", "repeat", "junk", "wrong_color", "unmentioned"}
        assert noisy != clean
    for i in range(200):
        rng = np.random.default_rng([4, i])
        clean = clean_caption(objects, rng)
        noisy, applied = add_caption_noise(clean, objects, rng, 0.5)
        if applied == ["misspelling"]:
            assert noisy != clean and len(noisy.split()) == len(clean.split())
        if applied == ["unmentioned"]:
            assert sum(f"{o['color']} {o['shape']}" in noisy for o in objects) == 1
        if applied == ["wrong_color"]:
            assert sum(f"{o['color']} {o['shape']}" in noisy for o in objects) == 1
            assert "star" in noisy and "circle" in noisy


def test_object_coverage_and_masks():
    fractions = []
    for image, objects in _scenes(300):
        assert image.size == (64, 64) and image.mode == "RGB"
        assert image.info["background"] in ("gradient", "stripes", "checker", "noise")
        union = np.zeros((64, 64), dtype=bool)
        for obj in objects:
            mask = obj["mask"]
            assert mask.dtype == bool and mask.shape == (64, 64) and mask.any()
            rle = encode_mask(mask)
            assert rle["size"] == [64, 64] and sum(rle["counts"]) == 64 * 64
            assert np.array_equal(decode_mask(rle), mask)
            x0, y0, x1, y1 = obj["box"]
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()
            assert not (union & mask).any()
            union |= mask
        fractions.append(union.mean())
    fractions = np.array(fractions)
    assert 0.12 <= fractions.mean() <= 0.3
    assert ((fractions >= 0.08) & (fractions <= 0.45)).mean() >= 0.95


def test_rle_edge_cases():
    for mask in (np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(4, dtype=bool)):
        rle = encode_mask(mask)
        assert np.array_equal(decode_mask(rle), mask)
    assert encode_mask(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_scene_objects_look_right():
    image, objects = render_scene(np.random.default_rng(5), 64, 1, shapes=["ring"])
    (obj,) = objects
    assert obj["shape"] == "ring"
    pixels = np.asarray(image, dtype=np.float32)[obj["mask"]]
    assert np.abs(pixels.mean(0) - np.array(COLORS[obj["color"]])).max() < 25
    x0, y0, x1, y1 = obj["box"]
    assert not obj["mask"][(y0 + y1) // 2, (x0 + x1) // 2]


def test_prepare_does_not_regenerate(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    paths = prepare_synthetic(_cfg(root, num_train=5, num_val=2))
    shard = Path(paths.train_shards.replace("{00000..00000}", "00000"))
    mtime = shard.stat().st_mtime_ns
    sentinel = root / "sentinel.txt"
    sentinel.write_text("keep")
    again = prepare_synthetic(_cfg(root, num_train=50, seed=9))
    assert again == paths
    assert shard.stat().st_mtime_ns == mtime and sentinel.read_text() == "keep"
    assert json.loads((root / "dataset.json").read_text())["config"]["num_train"] == 5


def test_prepare_rejects_foreign_dir(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "half.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="data.init_args.synthetic.root"):
        prepare_synthetic(_cfg(root))
    assert os.listdir(root) == ["half.tar"]
    with pytest.raises(FileNotFoundError):
        synthetic_paths(root)


def test_config_replace_roundtrip(generated):
    marker = json.loads((generated / "dataset.json").read_text())
    cfg = SyntheticConfig(**marker["config"])
    assert replace(cfg, root=str(generated)) == _cfg(generated)
    assert marker["shape_classes"] == list(SHAPE_CLASSES) and len(SHAPE_CLASSES) >= 10
    assert {k: tuple(v) for k, v in marker["colors"].items()} == COLORS and len(COLORS) >= 8
    assert marker["counts"]["train"] == 30 and marker["format_version"] >= 1
