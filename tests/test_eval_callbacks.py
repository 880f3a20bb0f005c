"""Evaluation set readers, bad-input errors, skip counting, the callbacks in a real Trainer, and 2-process DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import open_clip
import pytest
import torch
import webdataset as wds
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_juicer.callbacks import RetrievalEvaluation, ZeroShotEvaluation
from lightning_juicer.callbacks.evaluation import append_results
from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.synthetic import SHAPE_CLASSES, SyntheticConfig, prepare_synthetic
from lightning_juicer.errors import ConfigError
from lightning_juicer.evaluation.common import SampleKeep, eval_loader
from lightning_juicer.evaluation.datasets import (
    ImageFolderClassification,
    KarpathyRetrieval,
    WebDatasetEval,
    imagenet_subset,
    parse_captions,
)
from lightning_juicer.evaluation.retrieval import evaluate_retrieval
from lightning_juicer.evaluation.zeroshot import evaluate_zeroshot, resolve_templates
from lightning_juicer.models.module import JuicerCLIP

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
ZS = re.escape("trainer.callbacks[ZeroShotEvaluation].init_args")
RET = re.escape("trainer.callbacks[RetrievalEvaluation].init_args")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Tiny generated data: 2 train shards, 48 zero-shot images (12 classes), 21 retrieval images."""
    cfg = SyntheticConfig(root=str(tmp_path_factory.mktemp("eval") / "data"), num_train=64, samples_per_shard=32,
                          num_val=32, eval_per_class=4, num_retrieval=21)
    return cfg, prepare_synthetic(cfg)


@pytest.fixture(scope="module")
def model_args():
    return yaml.safe_load(QUICKSTART.read_text())["model"]["init_args"]


@pytest.fixture(scope="module")
def model(model_args):
    torch.manual_seed(0)
    return JuicerCLIP(**model_args).eval()


@pytest.fixture(scope="module")
def transform():
    return open_clip.image_transform(64, is_train=False)


def _write_shards(pattern: str, samples: list[dict], per_shard: int) -> str:
    """Write samples into ``pattern % i`` tar shards; returns a brace spec."""
    n = 0
    for n, start in enumerate(range(0, len(samples), per_shard)):
        with wds.TarWriter(pattern % n) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
    return pattern.replace("%05d", f"{{00000..{n:05d}}}")


def _results(log_dir: str | Path) -> list[dict]:
    return json.loads((Path(log_dir) / "results.json").read_text())


# ------------------------------------------------------------------------------ readers


def test_image_folder_reader(synthetic, transform):
    _, paths = synthetic
    dataset = ImageFolderClassification(paths.zeroshot_dir, None, transform)
    assert dataset.classnames == sorted(SHAPE_CLASSES) and len(dataset) == 48
    sample = dataset[5]
    assert sample["image"].shape == (3, 64, 64) and sample["label"] == 1 and sample["index"] == 5


def test_imagenet_wnid_folders_get_the_1k_names(tmp_path, transform):
    wnids, names = imagenet_subset("imagenet-r")
    assert len(wnids) == 200 and names[:2] == ["goldfish", "great white shark"]
    assert len(imagenet_subset("imagenet-a")[0]) == 200 and len(imagenet_subset("imagenet")[0]) == 1000
    for wnid in wnids:
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "x.png").write_bytes(b"")
    assert ImageFolderClassification(tmp_path, "imagenet-r", transform).classnames == names
    assert ImageFolderClassification(tmp_path, None, transform).classnames == names
    with pytest.raises(ConfigError, match="200 class folders but imagenet has 1000"):
        ImageFolderClassification(tmp_path, "imagenet", transform)
    with pytest.raises(ConfigError, match="not imagenet-a wnids"):
        ImageFolderClassification(tmp_path, "imagenet-a", transform)


def test_karpathy_reader_both_json_flavours(synthetic, transform, tmp_path):
    _, paths = synthetic
    for root in (paths.retrieval_json.parent, paths.retrieval_images):  # root/filepath/filename or root/filename
        dataset = KarpathyRetrieval(paths.retrieval_json, root, transform)
        assert len(dataset) == 21 and all(len(c) == 5 for _, c in dataset.items)
        assert dataset[0]["image"].shape == (3, 64, 64)
    assert all(len(c) == 2 for _, c in KarpathyRetrieval(paths.retrieval_json, paths.retrieval_images, transform,
                                                          captions_per_image=2).items)
    records = [{"image": f"images/{i:05d}.jpg", "caption": [f"caption {i} {j}" for j in range(5)]} for i in range(3)]
    (tmp_path / "blip.json").write_text(json.dumps(records))
    dataset = KarpathyRetrieval(tmp_path / "blip.json", paths.retrieval_json.parent, transform)
    assert len(dataset) == 3 and dataset[2]["captions"][0] == "caption 2 0"
    with pytest.raises(ConfigError, match="no images with split 'val'"):
        KarpathyRetrieval(paths.retrieval_json, paths.retrieval_images, transform, split="val")


def test_webdataset_readers_split_disjointly_over_ranks(synthetic, transform, tmp_path):
    _, paths = synthetic
    folder = ImageFolderClassification(paths.zeroshot_dir, None, transform)
    cls_samples = [{"__key__": f"{i:04d}", "jpg": path.read_bytes(), "cls": str(label).encode()}
                   for i, (path, label) in enumerate(folder.samples)]
    spec = _write_shards(str(tmp_path / "cls-%05d.tar"), cls_samples, per_shard=20)  # 3 shards: 20, 20, 8
    shares = [list(WebDatasetEval(spec, "classification", transform).distribute(r, 2)) for r in range(2)]
    indices = [s["index"] for share in shares for s in share]
    assert len(indices) == len(set(indices)) == 48
    assert sorted(s["label"] for share in shares for s in share) == sorted(label for _, label in folder.samples)

    karpathy = KarpathyRetrieval(paths.retrieval_json, paths.retrieval_images, transform)
    txt_samples = [{"__key__": f"{i:04d}", "jpg": p.read_bytes(),
                    "txt": ("\n".join(c) if i % 2 else json.dumps(c)).encode()}
                   for i, (p, c) in enumerate(karpathy.items)]
    spec = _write_shards(str(tmp_path / "txt-%05d.tar"), txt_samples, per_shard=8)
    samples = list(WebDatasetEval(spec, "retrieval", transform))
    assert [s["captions"] for s in samples] == [c for _, c in karpathy.items]
    assert parse_captions(b"[not json\nsecond") == ["[not json", "second"]


def test_webdataset_zeroshot_through_the_callback(synthetic, transform, tmp_path, model):
    _, paths = synthetic
    folder = ImageFolderClassification(paths.zeroshot_dir, None, transform)
    samples = [{"__key__": f"{i:04d}", "jpg": p.read_bytes(), "cls": str(y).encode()}
               for i, (p, y) in enumerate(folder.samples)]
    spec = _write_shards(str(tmp_path / "zs-%05d.tar"), samples, per_shard=30)
    callback = ZeroShotEvaluation(root=spec, classnames=str(paths.classnames_file), templates="photo", num_workers=0)
    dataset = callback.build_dataset(None, transform)
    templates = resolve_templates("photo")
    from_shards = evaluate_zeroshot(model, eval_loader(dataset, 64, 16, 0), callback.classnames_list, templates,
                                    torch.device("cpu"))
    from_folder = evaluate_zeroshot(model, eval_loader(folder, 64, 16, 0), folder.classnames, templates,
                                    torch.device("cpu"))
    assert from_shards.metrics == from_folder.metrics and from_shards.num_samples == 48


# ------------------------------------------------------------------------------ bad input


def test_missing_paths_and_mismatched_classnames_raise_config_error(synthetic, transform, tmp_path):
    _, paths = synthetic
    with pytest.raises(ConfigError, match=rf"^{ZS}\.root: evaluation folder not found"):
        ZeroShotEvaluation(root=str(tmp_path / "missing")).build_dataset(None, transform)
    with pytest.raises(ConfigError, match=rf"^{ZS}\.root: shard file not found"):
        ZeroShotEvaluation(root=str(tmp_path / "missing-{0..3}.tar"), classnames="imagenet").build_dataset(None, None)
    (tmp_path / "eleven.txt").write_text("\n".join(sorted(SHAPE_CLASSES)[:11]))
    with pytest.raises(ConfigError, match=rf"^{ZS}\.classnames: .* lists 11 class names but .* has 12 class folders"):
        ZeroShotEvaluation(root=str(paths.zeroshot_dir), classnames=str(tmp_path / "eleven.txt")).build_dataset(
            None, transform)
    with pytest.raises(ConfigError, match=rf"^{RET}\.annotations: annotation file not found"):
        RetrievalEvaluation(root=str(paths.retrieval_images), annotations=str(tmp_path / "x.json")).build_dataset(
            None, transform)
    with pytest.raises(ConfigError, match=rf"^{RET}\.root: none of the 21 images"):
        RetrievalEvaluation(root=str(tmp_path), annotations=str(paths.retrieval_json)).build_dataset(None, transform)
    with pytest.raises(ConfigError, match=rf"^{ZS}\.keep_ratio"):
        ZeroShotEvaluation(keep_ratio=0.0)


def test_bad_path_fails_at_trainer_setup(synthetic, model, tmp_path):
    cfg, _ = synthetic
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ZeroShotEvaluation(root=str(tmp_path / "nope"))])
    with pytest.raises(ConfigError, match=rf"{ZS}\.root"):
        trainer.validate(model, JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0))


def test_unreadable_images_are_counted_skips(synthetic, transform, tmp_path, model):
    _, paths = synthetic
    zs_dir = tmp_path / "zeroshot"
    shutil.copytree(paths.zeroshot_dir, zs_dir)
    (zs_dir / "circle" / "broken.jpg").write_bytes(b"not an image")
    folder = ImageFolderClassification(zs_dir, None, transform)
    result = evaluate_zeroshot(model, eval_loader(folder, 64, 16, 0), folder.classnames, ["{}"], torch.device("cpu"))
    assert (result.num_samples, result.skipped) == (48, 1)

    ret_dir = tmp_path / "retrieval"
    shutil.copytree(paths.retrieval_json.parent, ret_dir)
    (ret_dir / "images" / "00003.jpg").write_bytes(b"\xff\xd8 truncated")
    dataset = KarpathyRetrieval(ret_dir / "karpathy_test.json", ret_dir, transform)
    result = evaluate_retrieval(model, eval_loader(dataset, 64, 8, 0), torch.device("cpu"))
    assert (result.num_samples, result.skipped, result.extra["num_texts"]) == (20, 1, 100)


def test_keep_ratio_below_one_is_deterministic(synthetic, transform, model):
    _, paths = synthetic
    dataset = KarpathyRetrieval(paths.retrieval_json, paths.retrieval_images, transform)
    keep = SampleKeep("random", 64, 0.25, seed=1)
    runs = [evaluate_retrieval(model, eval_loader(dataset, 64, b, 0), torch.device("cpu"), keep) for b in (4, 21)]
    assert runs[0].metrics == runs[1].metrics and runs[0].num_samples == 21


def test_append_results_keeps_records_and_sets_aside_a_corrupt_file(tmp_path):
    path = tmp_path / "results.json"
    append_results(path, [{"a": 1}])
    append_results(path, [{"b": 2}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"b": 2}]
    path.write_text("{broken")
    append_results(path, [{"c": 3}])
    assert json.loads(path.read_text()) == [{"c": 3}] and (tmp_path / "results.json.bad").is_file()


# ------------------------------------------------------------------------------ Trainer runs


def _callbacks(**zs) -> list:
    return [
        ZeroShotEvaluation(name="synthetic", templates="photo", title="Synthetic", batch_size=16, num_workers=0, **zs),
        RetrievalEvaluation(name="synthetic_retrieval", title="Synthetic", batch_size=8, num_workers=0),
    ]


def _trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="run"), callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


@pytest.fixture(scope="module")
def fitted(synthetic, model_args, tmp_path_factory):
    """Fit 2 steps with zero-shot every step, retrieval (keep ratio 0.5) at the end, checkpoint on top-1."""
    cfg, _ = synthetic
    tmp = tmp_path_factory.mktemp("fit")
    L.seed_everything(0)
    model = JuicerCLIP(**{**model_args, "warmup_steps": 1})
    checkpoint = ModelCheckpoint(dirpath=tmp / "ckpt", monitor="eval/synthetic/top1", mode="max",
                                 every_n_train_steps=1, save_top_k=1, save_last=True)
    callbacks = [
        ZeroShotEvaluation(name="synthetic", templates="photo", every_n_steps=1, batch_size=16, num_workers=0),
        RetrievalEvaluation(name="synthetic_retrieval", keep_ratio=0.5, batch_size=8, num_workers=0),
        checkpoint,
    ]
    trainer = _trainer(tmp, callbacks, max_steps=2, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(model, JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0))
    return trainer, checkpoint


def test_fit_evaluates_every_n_steps_and_at_the_end(fitted):
    trainer, checkpoint = fitted
    records = _results(trainer.log_dir)
    zeroshot = [(r["step"], r["metric"]) for r in records if r["task"] == "zeroshot"]
    assert zeroshot == [(1, "top1"), (1, "top5"), (2, "top1"), (2, "top5")]  # step 2 not repeated at the end
    retrieval = [r for r in records if r["task"] == "retrieval"]
    assert [r["metric"] for r in retrieval] == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                                "mean_recall"]
    assert all(r["step"] == 2 and r["keep_ratio"] == 0.5 and r["selection"] == "random" and r["stage"] == "fit"
               and r["checkpoint"] is None and r["num_samples"] == 21 and r["skipped"] == 0 for r in retrieval)
    assert records[0]["name"] == "synthetic zero-shot top-1"
    assert retrieval[0]["name"] == "synthetic_retrieval image->text R@1"
    assert checkpoint.best_model_score is not None  # ModelCheckpoint could monitor eval/synthetic/top1
    assert "eval/synthetic_retrieval/mean_recall" in trainer.callback_metrics
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"eval/synthetic/top1", "eval/synthetic/skipped", "eval/synthetic_retrieval/t2i_r10"} <= logged


def test_validate_and_test_run_every_evaluation_with_val_shards(fitted, synthetic, model_args, tmp_path):
    cfg, _ = synthetic
    _, checkpoint = fitted
    trainer = _trainer(tmp_path, _callbacks(), limit_val_batches=1)
    out = trainer.validate(JuicerCLIP(**model_args), JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0),
                           ckpt_path=checkpoint.best_model_path)[0]
    assert "val/loss" in out and 0.0 <= out["eval/synthetic/top1"] <= 1.0 and "eval/synthetic_retrieval/t2i_r1" in out
    records = _results(trainer.log_dir)
    step = torch.load(checkpoint.best_model_path, weights_only=True)["global_step"]
    assert {(r["stage"], r["checkpoint"], r["step"]) for r in records} == {
        ("validate", checkpoint.best_model_path, step)}
    assert len(records) == 2 + 7
    tested = trainer.test(JuicerCLIP(**model_args), JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0),
                          ckpt_path=checkpoint.best_model_path)[0]
    assert tested["eval/synthetic/top1"] == pytest.approx(out["eval/synthetic/top1"])
    assert [r["stage"] for r in _results(trainer.log_dir)].count("test") == 2 + 7


def _metrics_by_name(records: list[dict]) -> dict[str, float]:
    out = {f"{r['dataset']}/{r['metric']}": r["value"] for r in records}
    out.update({f"{r['dataset']}/{key}": r[key] for r in records for key in ("num_samples", "skipped")})
    return out


def test_two_process_ddp_gives_the_same_metrics_as_one(fitted, synthetic, model_args, tmp_path):
    cfg, paths = synthetic
    _, checkpoint = fitted
    one = _trainer(tmp_path / "one", _callbacks(), limit_val_batches=1)
    one.validate(JuicerCLIP(**model_args), JuicerDataModule(synthetic=cfg, batch_size=8, num_workers=0),
                 ckpt_path=checkpoint.last_model_path)
    extra = {"trainer": {"callbacks": [
        {"class_path": f"lightning_juicer.callbacks.{type(c).__name__}",
         "init_args": {"name": c.name, "title": c.title, "batch_size": c.batch_size, "num_workers": 0,
                       **({"templates": "photo"} if isinstance(c, ZeroShotEvaluation) else {})}}
        for c in _callbacks()]}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(extra))
    command = [
        sys.executable, "-m", "lightning_juicer", "validate", "--config", str(QUICKSTART),
        "--config", str(tmp_path / "eval.yaml"), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(tmp_path / "two"), "--trainer.logger.init_args.save_dir",
        str(tmp_path / "two"), "--data.init_args.synthetic.root", str(paths.root),
        "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0",
        "--ckpt_path", checkpoint.last_model_path,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "MEMBER: 2/2" in output and "Synthetic zero-shot top-1" in output
    two = json.loads(next((tmp_path / "two").rglob("results.json")).read_text())
    assert _metrics_by_name(two) == pytest.approx(_metrics_by_name(_results(one.log_dir)), abs=1e-9)
    assert _metrics_by_name(two)["synthetic_retrieval/num_samples"] == 21  # 21 images over 2 ranks: 1 padded
