"""The real-photo benchmark (lightning_juicer.realphoto): deterministic, readable by the project, truthful labels."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.io.writers import decode_mask
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.datasets import ImageFolderClassification, KarpathyRetrieval
from tests.conftest import REAL_PHOTOS_SKIP, tiny_real_photos_config

pytestmark = pytest.mark.skipif(REAL_PHOTOS_SKIP is not None, reason=str(REAL_PHOTOS_SKIP))

if REAL_PHOTOS_SKIP is None:  # scikit-image (and its scipy) come with the real extra
    from scipy import ndimage

    from lightning_juicer.realphoto import FASHION_CLASSES, build_real_photos, named_classes
    from lightning_juicer.realphoto.captions import NoiseRates, names_context, noisy_caption
    from lightning_juicer.realphoto.sources import DEFAULT_FASHION_MNIST, load_fashion_mnist

NAME_TO_LABEL = {} if REAL_PHOTOS_SKIP else {c.name: i for i, c in enumerate(FASHION_CLASSES)}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def samples(pattern_dir: Path) -> list[dict]:
    """Every sample of a shard folder as {ext: bytes}, in key order."""
    out: dict[str, dict] = {}
    for shard in sorted(pattern_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                out.setdefault(f"{shard.name}/{key}", {})[ext] = tar.extractfile(member).read()
    return [out[k] for k in sorted(out)]


def test_two_builds_are_byte_identical_and_the_seed_changes_them(tiny_real_photos, tmp_path):
    again = build_real_photos(tiny_real_photos_config(tmp_path / "again"))
    first, second = digests(tiny_real_photos.root), digests(again.root)
    assert len(first) > 100 and first == second
    other = build_real_photos(tiny_real_photos_config(tmp_path / "other", seed=1, num_val=1, num_retrieval=1,
                                                      zeroshot_per_class=1, head_train_per_class=1,
                                                      head_val_per_class=1))
    assert digests(other.root)["train/00000.tar"] != first["train/00000.tar"]
    with tarfile.open(again.root / "train" / "00000.tar") as tar:
        infos = tar.getmembers()
    assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(0, 0, 0, "")}
    assert [i.name for i in infos] == sorted(i.name for i in infos)


def test_the_datamodule_trains_on_the_shards(tiny_real_photos):
    spec = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))
    dm = JuicerDataModule(train_shards=tiny_real_photos.train_shards, val_shards=tiny_real_photos.val_shards,
                          batch_size=16, num_workers=0, data_spec=spec, selection="random", keep_ratio=0.5,
                          shuffle_buffer=0)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 5  # 80 samples from sizes.json / 16
    assert batches[0]["image"].shape == (16, 3, 64, 64) and batches[0]["keep"].shape == (16, 32)
    assert len({k for b in batches for k in b["key"]}) == 80 and not dm.drops


def test_the_evaluation_readers_read_the_eval_sets(tiny_real_photos):
    transform = DataSpec(64, 8, tokenizer=None).image_transform()
    zeroshot = ImageFolderClassification(tiny_real_photos.zeroshot_dir, None, transform)
    assert zeroshot.classnames == sorted((c.name for c in FASHION_CLASSES), key=lambda n: n.replace("-", ""))
    assert len(zeroshot) == 30 and zeroshot[0]["image"].shape == (3, 64, 64)
    retrieval = KarpathyRetrieval(tiny_real_photos.retrieval_json, tiny_real_photos.retrieval_json.parent, transform)
    assert len(retrieval) == 10
    assert all(len(set(retrieval[i]["captions"])) == 5 and retrieval[i]["image"] is not None for i in range(10))
    head = ImageFolderClassification(tiny_real_photos.head_train, None, transform)
    assert head.classnames == sorted([c.name for c in FASHION_CLASSES] + ["none"]) and len(head) == 33
    templates = tiny_real_photos.templates_file.read_text().splitlines()
    assert templates and all(t.count("{}") == 1 for t in templates)


def test_zeroshot_images_are_the_unmodified_test_items_with_their_labels(tiny_real_photos):
    images, labels = load_fashion_mnist(DEFAULT_FASHION_MNIST, "test")
    names = tiny_real_photos.classnames_file.read_text().splitlines()
    folders = sorted(p for p in tiny_real_photos.zeroshot_dir.iterdir() if p.is_dir())
    for folder, name in zip(folders, names):
        for path in folder.glob("*.png"):
            index = int(path.stem.split("_")[1])
            assert FASHION_CLASSES[labels[index]].name == name
            small = np.asarray(Image.open(path).convert("L").resize((28, 28), Image.BOX), dtype=np.float32)
            assert np.corrcoef(small.ravel(), images[index].ravel().astype(np.float32))[0, 1] > 0.95


def test_items_are_disjoint_between_splits(tiny_real_photos):
    root = tiny_real_photos.root
    train = {o["fashion_mnist"] for s in samples(root / "train") for o in json.loads(s["json"])["objects"]}
    head = {f"train/{int(p.stem.split('_')[1])}" for p in (root / "head").rglob("train_*.jpg")}
    val = {o["fashion_mnist"] for s in samples(root / "val") for o in json.loads(s["json"])["objects"]}
    retrieval = {o["fashion_mnist"] for v in json.loads(tiny_real_photos.retrieval_objects.read_text()).values()
                 for o in v["objects"]}
    zeroshot = {f"test/{int(p.stem.split('_')[1])}" for p in tiny_real_photos.zeroshot_dir.rglob("*.png")}
    assert len(head) == 11 * 5 - 5 * 1 and train and val and retrieval  # 10 classes x (3 + 2); none has no item
    assert not train & head and not val & retrieval and not zeroshot & (val | retrieval)


def test_masks_match_the_pasted_items(tiny_real_photos):
    images = load_fashion_mnist(DEFAULT_FASHION_MNIST, "train")[0]
    checked = 0
    for sample in samples(tiny_real_photos.root / "train"):
        meta = json.loads(sample["json"])
        image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("L"), dtype=np.float32)
        masks = [decode_mask(o["mask"]) for o in meta["objects"]]
        assert sum(m.astype(int) for m in masks).max() <= 1  # disjoint
        assert abs(meta["object_fraction"] - float(np.logical_or.reduce(masks).mean())) < 1e-6
        if len(masks) != 1:
            continue
        obj, mask = meta["objects"][0], masks[0]
        ys, xs = np.nonzero(mask)
        assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # The item, cut from its own 28 x 28 picture and scaled into the box, is where the mask says.
        pixels = images[int(obj["fashion_mnist"].split("/")[1])]
        cut = ndimage.binary_fill_holes(pixels > 12)
        rows, cols = np.nonzero(cut)
        x0, y0, x1, y1 = obj["box"]
        crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        alpha = Image.fromarray(cut[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.uint8) * 255)
        expected = np.asarray(alpha.resize((x1 - x0, y1 - y0), Image.BILINEAR)) >= 128
        inside = mask[y0:y1, x0:x1]
        assert (expected & inside).sum() / (expected | inside).sum() > 0.8
        grey = np.asarray(Image.fromarray(crop).resize((x1 - x0, y1 - y0), Image.BILINEAR), dtype=np.float32)
        seen = image[y0:y1, x0:x1]
        if grey[inside].std() > 10:  # the item's texture shows through its tint
            assert np.corrcoef(grey[inside], seen[inside])[0, 1] > 0.6
        checked += 1
    assert checked >= 30


def test_captions_name_objects_at_the_configured_rates():
    rng = np.random.default_rng(0)
    rates = NoiseRates(missing_object=0.2, wrong_object=0.1, typo=0.0, stutter=0.3, junk=0.3, shouting=0.1)
    n, all_named, wrong, context = 3000, 0, 0, 0
    for _ in range(n):
        labels = list(rng.choice(10, size=1 + int(rng.random() < 0.35), replace=False))
        cap = noisy_caption(labels, "chelsea", rng, 0.4, rates)
        found = named_classes(cap.text)
        assert found == set(cap.named) | ({cap.wrong} if cap.wrong is not None else set())
        all_named += set(labels) <= found
        wrong += bool(found - set(labels))
        context += names_context(cap.text, "chelsea")
    def close(count, p):
        assert abs(count / n - p) < 4 * np.sqrt(p * (1 - p) / n), (count / n, p)
    close(all_named, 0.8 * 0.9)
    close(wrong, 0.1 * (1 - 0.2 * 0.65))
    close(context, 0.4)


def test_built_captions_agree_with_their_ground_truth(tiny_real_photos):
    metas = [json.loads(s["json"]) for s in samples(tiny_real_photos.root / "train")]
    for meta in metas:
        if "typo" in meta["noise"]:
            continue
        expected = {NAME_TO_LABEL[n] for n in meta["named"]} | ({NAME_TO_LABEL[meta["wrong"]]} if meta["wrong"] else set())
        assert named_classes(meta["caption"]) == expected
    assert sum("typo" in m["noise"] for m in metas) > 5 and sum(m["context"]["named"] for m in metas) > 15


def test_bad_config_fails_in_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="fashion_mnist_dir"):
        build_real_photos(tiny_real_photos_config(tmp_path / "a", fashion_mnist_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="photos"):
        build_real_photos(tiny_real_photos_config(tmp_path / "b", photos=["lena"]))
    with pytest.raises(ConfigError, match="num_train"):
        build_real_photos(tiny_real_photos_config(tmp_path / "c", num_train=40000))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        build_real_photos(tiny_real_photos_config(tmp_path / "d"))
