"""Sample-level sieves: the algorithms against brute force, the embeddings pass, keep lists and the DataModule."""

from __future__ import annotations

import dataclasses
import heapq
import json
from pathlib import Path

import lightning as L
import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from lightning_juicer.data import DataSpec, JuicerDataModule
from lightning_juicer.data.samples import load_rgb
from lightning_juicer.errors import ConfigError
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.sieves.clustered import balanced_quotas, cluster_sieve, d4, max_earlier_similarity, semdedup
from lightning_juicer.sieves.d2 import d2_prune
from lightning_juicer.io.embeddings import read_embeddings, write_embeddings
from lightning_juicer.passes.embeddings import run_embeddings_pass
from lightning_juicer.io.keeplist import read_keep_list, write_keep_list
from lightning_juicer.sieves.neighbors import knn, normalise
from lightning_juicer.sieves import SIEVES
from lightning_juicer.sieves.run import run_sieve
from lightning_juicer.sieves.scored import neg_clip_loss, norm_sim

SPEC = DataSpec(image_size=64, patch_size=8, tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16))


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(sizes, dim=16, spread=0.05, seed=0):
    """Well-separated unit-norm blobs of the given sizes, and each row's blob."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(len(sizes), dim)))
    x = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    return normalise(x), np.repeat(np.arange(len(sizes)), sizes)


# --- algorithms -------------------------------------------------------------------------------------------------


def test_balanced_quotas_redistribute_what_small_clusters_cannot_use():
    assert balanced_quotas(np.array([1, 5, 10]), 9).tolist() == [1, 4, 4]
    assert balanced_quotas(np.array([2, 0, 3, 50]), 20).tolist() == [2, 0, 3, 15]
    assert balanced_quotas(np.array([4, 4, 4]), 10).tolist() in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert balanced_quotas(np.array([3, 3]), 100).tolist() == [3, 3]


def test_cluster_sieve_keeps_equal_shares_of_unequal_clusters():
    x, blob = blobs([10, 50, 100])
    kept = cluster_sieve(x, 60, clusters=3, seed=0, nredo=5)
    assert np.bincount(blob[kept.indices], minlength=3).tolist() == [10, 25, 25]
    assert kept.counts == {"clusters": 3, "empty_clusters": 0}


def test_cluster_sieve_counts_empty_clusters_on_repeated_points():
    x = np.repeat(normalise(np.random.default_rng(1).normal(size=(3, 8))), 10, axis=0)
    kept = cluster_sieve(x, 15, clusters=6, seed=0)
    assert len(kept.indices) == 15 and kept.counts["empty_clusters"] == 3


def test_max_earlier_similarity_blockwise_equals_brute_force():
    x = normalise(np.random.default_rng(2).normal(size=(37, 6)))
    sims = x @ x.T
    brute = np.array([-1.0] + [sims[j, :j].max() for j in range(1, 37)])
    np.testing.assert_allclose(max_earlier_similarity(x, block_elems=40), brute, atol=1e-6)
    np.testing.assert_allclose(max_earlier_similarity(x), brute, atol=1e-6)


def near_duplicates(seed=3):
    """30 distinct points in 3 groups, and 10 near-copies of the first 10 (rows 30..39)."""
    x, _ = blobs([10, 10, 10], dim=32, spread=0.3, seed=seed)
    rng = np.random.default_rng(seed)
    return normalise(np.concatenate([x, x[:10] + 0.003 * rng.normal(size=(10, 32))]))


def test_semdedup_removes_one_of_each_near_duplicate_the_one_nearer_the_centroid():
    x = near_duplicates()
    for kept in (semdedup(x, 30, clusters=3, seed=0), semdedup(x, 0, clusters=3, seed=0, eps=0.01)):
        pairs = [(i, 30 + i) for i in range(10)]
        assert len(kept.indices) == 30 and kept.counts["duplicates_removed"] == 10
        assert all((a in kept.indices) != (b in kept.indices) for a, b in pairs)
        assert set(range(10, 30)) <= set(kept.indices.tolist())
    from lightning_juicer.sieves.neighbors import spherical_kmeans

    clusters = spherical_kmeans(x, 3, seed=0)
    for a, b in [(i, 30 + i) for i in range(10)]:
        farther = a if clusters.similarity[a] < clusters.similarity[b] else b
        assert farther in kept.indices


def test_d4_dedups_then_drops_the_most_prototypical():
    x = near_duplicates()
    kept = d4(x, 20, clusters=3, seed=0, dedup_fraction=0.75, recluster=3)
    assert len(kept.indices) == 20 and kept.counts["after_semdedup"] == 30
    assert kept.counts["prototypical_removed"] == 10
    assert sum((i in kept.indices) and (30 + i in kept.indices) for i in range(10)) == 0


def test_neg_clip_loss_equals_the_formula_over_one_batch():
    rng = np.random.default_rng(4)
    f, g = normalise(rng.normal(size=(12, 8))), normalise(rng.normal(size=(12, 8)))
    tau = 0.07
    logits = torch.from_numpy(f @ g.T).double() / tau
    expected = torch.diagonal(logits) * tau - tau / 2 * (logits.logsumexp(1) + logits.logsumexp(0))
    np.testing.assert_allclose(neg_clip_loss(f, g, tau, batch_size=64, repeats=3, seed=0), expected.numpy(), atol=1e-6)
    # smaller batches: every sample scored within some batch each repeat; the mean is finite and differs
    small = neg_clip_loss(f, g, tau, batch_size=5, repeats=4, seed=0)
    assert np.isfinite(small).all() and not np.allclose(small, expected.numpy())


def test_norm_sim_is_the_norm_of_target_cosines():
    rng = np.random.default_rng(5)
    f, target = normalise(rng.normal(size=(6, 4))), normalise(rng.normal(size=(9, 4)))
    sims = f @ target.T
    np.testing.assert_allclose(norm_sim(f, target, 2.0, block=4), np.sqrt((sims**2).sum(1)), atol=1e-6)
    np.testing.assert_allclose(norm_sim(f, target, np.inf), np.abs(sims).max(1), atol=1e-6)


def test_knn_matches_brute_force():
    x = normalise(np.random.default_rng(6).normal(size=(40, 5)))
    sims, idx = knn(x, 4)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :4])
    np.testing.assert_allclose(sims, np.take_along_axis(full, idx, 1), atol=1e-5)


def test_knn_above_the_exact_limit_uses_ivf_and_finds_most_true_neighbours():
    rng = np.random.default_rng(16)
    centres = normalise(rng.normal(size=(30, 16)))
    x = normalise(centres[rng.integers(0, 30, 3000)] + 0.15 * rng.normal(size=(3000, 16)))
    exact_sims, exact = knn(x, 5)
    sims, idx = knn(x, 5, exact_max=100, nprobe=4)  # IVF: ~55 lists, 4 probed
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, idx)])
    assert 0.8 <= recall < 1.0  # approximate, but finds most neighbours of clustered embeddings
    assert (idx != np.arange(3000)[:, None]).all() and (sims <= exact_sims[:, :1] + 1e-5).all()


def test_knn_with_the_hnsw_index_finds_most_true_neighbours_and_is_refused_on_the_gpu():
    rng = np.random.default_rng(16)
    centres = normalise(rng.normal(size=(30, 16)))
    x = normalise(centres[rng.integers(0, 30, 3000)] + 0.15 * rng.normal(size=(3000, 16)))
    exact_sims, exact = knn(x, 5)
    sims, idx = knn(x, 5, exact_max=100, index="hnsw", ef_search=16)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, idx)])
    assert 0.8 <= recall < 1.0, recall  # approximate (ef_search 16 on 3,000 rows), but finds most neighbours
    assert (idx != np.arange(3000)[:, None]).all() and (sims <= exact_sims[:, :1] + 1e-5).all()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # nearest first
    with pytest.raises(ConfigError, match="^index: hnsw runs on the CPU only"):
        knn(x, 5, gpu=True, index="hnsw")
    with pytest.raises(ConfigError, match="^index: 'annoy' is not one of"):
        knn(x, 5, index="annoy")


def test_the_d2_sieve_hands_its_knn_index_settings_to_the_knn(monkeypatch):
    from lightning_juicer.sieves import d2 as d2_module
    from lightning_juicer.sieves.base import SIEVES, Candidates

    calls, real = [], d2_module.knn
    monkeypatch.setattr(d2_module, "knn", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    rng = np.random.default_rng(8)
    image, text = normalise(rng.normal(size=(60, 6))), normalise(rng.normal(size=(60, 6)))
    sieve = SIEVES.build("d2", index="hnsw", ef_search=24, knn=4)
    kept = sieve.keep(Candidates(60, {"image": image, "text": text}), 30, seed=0)
    assert len(kept.indices) == 30 and calls[0]["index"] == "hnsw" and calls[0]["ef_search"] == 24
    assert sieve.params()["index"] == "hnsw"  # recorded in the keep list


def test_neg_clip_loss_in_row_blocks_equals_one_block():
    rng = np.random.default_rng(17)
    f, g = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    whole = neg_clip_loss(f, g, 0.05, batch_size=20, repeats=2, seed=1)
    np.testing.assert_allclose(neg_clip_loss(f, g, 0.05, batch_size=20, repeats=2, seed=1, block=3), whole, atol=1e-6)


def test_d2_pruning_equals_a_naive_implementation():
    rng = np.random.default_rng(7)
    x, difficulty = normalise(rng.normal(size=(50, 6))), rng.uniform(size=50)
    kept = d2_prune(x, difficulty, 20, k=5, gamma_forward=1.5, gamma_reverse=0.7)
    sims, idx = knn(x, 5)
    dist = np.sqrt(np.clip(2 - 2 * sims, 0, None))
    score = difficulty + (np.exp(-1.5 * dist) * difficulty[idx]).sum(1)
    chosen: list[int] = []
    for _ in range(20):
        i = max((j for j in range(50) if j not in chosen), key=lambda j: score[j])
        chosen.append(i)
        for j, d in zip(idx[i], dist[i]):
            if j not in chosen:
                score[j] -= np.exp(-0.7 * d) * score[i]
    assert kept.indices.tolist() == sorted(chosen)
    assert heapq  # the real implementation uses a lazy heap; this is the O(n^2) reference


# --- embeddings pass, sieves, keep lists -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory, tiny_model_args):
    """A checkpoint of a randomly initialised tiny JuicerCLIP, as a fit would leave it."""
    torch.manual_seed(0)
    module = JuicerCLIP(**tiny_model_args)
    path = tmp_path_factory.mktemp("ref") / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path, module


@pytest.fixture(scope="module")
def embedded(tiny_synthetic, reference_ckpt, tmp_path_factory):
    """The embeddings pass over the tiny synthetic shards with the reference and the shipped governor."""
    out = tmp_path_factory.mktemp("emb")
    cfg = {"shards": tiny_synthetic.train_shards, "out_dir": str(out), "reference": {"name": str(reference_ckpt[0])},
           "governor": {"name": "juicer-synthetic"}, "batch_size": 48, "num_workers": 0, "accelerator": "cpu",
           "devices": 1, "progress": False}
    return cfg, run_embeddings_pass(cfg), out


def test_embeddings_pass_writes_the_reference_and_governor_embeddings_per_shard(embedded, tiny_synthetic,
                                                                                reference_ckpt):
    cfg, manifest, out = embedded
    assert manifest["totals"]["shards_written"] == 4 and manifest["totals"]["samples_written"] == 256
    files = sorted(out.glob("*.emb.parquet"))
    assert [f.name for f in files] == [f"0000{i}.emb.parquet" for i in range(4)]
    emb = read_embeddings(files)
    assert len(emb) == 256 and set(emb.arrays) == {"image", "text", "cls"}
    assert emb.arrays["image"].shape == (256, 96) and emb.shards[0] == "00000.tar"
    np.testing.assert_allclose(np.linalg.norm(emb.arrays["text"], axis=1), 1.0, atol=2e-3)
    _, module = reference_ckpt
    url = sorted(Path(tiny_synthetic.train_shards).parent.glob("*.tar"))[0]
    sample = next(iter(wds.tarfile_samples(iter([{"url": str(url)}]))))
    transform = open_clip.image_transform(64, is_train=False, resize_mode="shortest")
    with torch.no_grad():
        image = module.encode_image(transform(load_rgb(sample["jpg"]))[None])[0].numpy()
        text = module.encode_text(module.tokenizer([sample["txt"].decode().strip()]))[0].numpy()
    row = emb.keys.index(sample["__key__"])
    np.testing.assert_allclose(emb.arrays["image"][row], image, atol=5e-3)
    np.testing.assert_allclose(emb.arrays["text"][row], text, atol=5e-3)
    assert emb.temperature == pytest.approx(1 / module.model.logit_scale.exp().item(), rel=1e-5)
    again = run_embeddings_pass(cfg)
    assert again["totals"]["shards_existing"] == 4 and again["totals"]["shards_written"] == 0
    with pytest.raises(ConfigError, match="reference.name"):
        run_embeddings_pass({**cfg, "governor": {"name": None}})


@pytest.mark.parametrize("sieve", sorted(n for n in SIEVES if SIEVES.get(n).__module__.startswith("lightning_juicer.")))
def test_every_sieve_writes_a_keep_list_at_the_target_fraction(embedded, tmp_path, sieve):
    _, _, out = embedded
    files = str(out / "{00000..00003}.emb.parquet")
    own = {f.name for f in dataclasses.fields(SIEVES.get(sieve))}
    init_args = {k: v for k, v in {"clusters": 4, "repeats": 2, "batch_size": 64, "target": files}.items() if k in own}
    info = run_sieve({"sieve": {"class_path": sieve, "init_args": init_args}, "embeddings": files,
                      "out": str(tmp_path / "keep.json"), "fraction": 0.25})
    keep = read_keep_list(tmp_path / "keep.json")
    assert info["num_kept"] == len(keep) == 64 and info["achieved_fraction"] == 0.25
    assert keep.info["sieve"] == sieve and keep.info["target_fraction"] == 0.25
    assert set(keep.info["params"]) == own | {"seed"}
    assert {k: keep.info["params"][k] for k in init_args} == init_args
    assert set(keep.shards) <= {f"0000{i}.tar" for i in range(4)}


def test_degenerate_embeddings_are_counted_and_not_kept(tmp_path):
    x, _ = blobs([6, 6], dim=8)
    x[[0, 7]] = 0.0
    x[3, 2] = np.nan
    keys = [f"k{i}" for i in range(12)]
    write_embeddings(tmp_path / "a.emb.parquet", keys, {"image": x, "text": x}, {"shard": "a.tar", "temperature": 0.1})
    for sieve in ("clip_score", {"class_path": "cluster", "init_args": {"clusters": 2}},
                  {"class_path": "semdedup", "init_args": {"clusters": 2}}):
        info = run_sieve({"sieve": sieve, "embeddings": str(tmp_path / "a.emb.parquet"),
                          "out": str(tmp_path / "k.json"), "fraction": 1.0})
        assert info["counts"]["degenerate_embedding"] == 3 and info["num_kept"] == 9
        assert not {"k0", "k3", "k7"} & read_keep_list(tmp_path / "k.json").shards["a.tar"]


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_a_keep_fraction_outside_0_1_is_refused(tmp_path, fraction):
    with pytest.raises(ConfigError, match=r"fraction: .* is outside \(0, 1\]"):
        run_sieve({"sieve": "random", "embeddings": "x", "out": str(tmp_path / "k.json"), "fraction": fraction})


# --- DataModule --------------------------------------------------------------------------------------------------


def test_datamodule_trains_only_on_the_keep_list_and_counts_the_rest(tiny_synthetic, tmp_path):
    urls = sorted(str(p) for p in Path(tiny_synthetic.train_shards).parent.glob("*.tar"))
    keys = [s["__key__"] for s in wds.tarfile_samples(iter([{"url": urls[0]}, {"url": urls[1]}]))]
    kept = [("00000.tar", k) for k in keys[:64:2]] + [("00001.tar", k) for k in keys[64::4]]
    write_keep_list(tmp_path / "keep.json", "handmade", {}, kept, 256, 0.1875)
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, keep_list=str(tmp_path / "keep.json"),
                          batch_size=8, num_workers=0, shuffle_buffer=0, selection="random", data_spec=SPEC)
    dm.setup("fit")
    assert dm.train_num_samples == 48
    seen = []
    for batch in dm.train_dataloader():
        dm.on_after_batch_transfer(batch, 0)
        seen += batch["key"]
    assert sorted(seen) == sorted(k for _, k in kept)  # each kept sample once in the epoch
    assert dm.train_urls == urls[:2]  # shards with nothing kept are not read
    assert 0 < dm.drops["not_in_keep_list"] <= 128 - 48


def test_a_keep_list_for_other_shards_or_keys_is_refused(tiny_synthetic, tmp_path):
    bad_shard = tmp_path / "shard.json"
    write_keep_list(bad_shard, "x", {}, [("00042.tar", "a")], 1, 1.0)
    bad_key = tmp_path / "key.json"
    write_keep_list(bad_key, "x", {}, [("00001.tar", "no_such_key")], 1, 1.0)
    for path, message in ((bad_shard, "names shard 00042.tar"), (bad_key, "absent from shard .*no_such_key")):
        dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, keep_list=str(path), num_workers=0,
                              data_spec=SPEC)
        with pytest.raises(ConfigError, match=f"data.init_args.keep_list: .*{message}"):
            dm.setup("fit")
    (tmp_path / "junk.json").write_text(json.dumps({"sieve": "x"}))
    dm = JuicerDataModule(train_shards=tiny_synthetic.train_shards, keep_list=str(tmp_path / "junk.json"),
                          data_spec=SPEC)
    with pytest.raises(ConfigError, match="not a keep list"):
        dm.setup("fit")
    assert pq  # embeddings are Parquet; the keep list is JSON


# --- Cluster* ----------------------------------------------------------------------------------------------------


def test_cluster_star_keeps_patches_evenly_across_the_governors_patch_clusters():
    from lightning_juicer.governor.online import OnlineSelector
    from lightning_juicer.selection import Cluster, patch_kmeans, select_cluster

    labels = torch.tensor([[0] * 48 + [1] * 16, [0] * 8 + [1] * 8 + [2] * 48])
    keep = select_cluster(labels, 16, torch.Generator().manual_seed(0))
    assert [torch.bincount(labels[i][keep[i]], minlength=3).tolist() for i in range(2)] in (
        [[8, 8, 0], [6, 5, 5]], [[8, 8, 0], [5, 6, 5]], [[8, 8, 0], [5, 5, 6]])
    assert torch.equal(keep, keep.sort(dim=1).values) and all(len(set(r.tolist())) == 16 for r in keep)
    features = torch.zeros(1, 64, 4)
    features[0, :40, 0], features[0, 40:, 1] = 1.0, 1.0
    found = patch_kmeans(features + 0.01 * torch.randn(1, 64, 4), 2, generator=torch.Generator().manual_seed(1))
    assert len(set(found[0, :40].tolist())) == 1 and set(found[0, 40:].tolist()) == {1 - found[0, 0].item()}

    from lightning_juicer.governor.loading import load_governor

    selector = OnlineSelector(load_governor("juicer-synthetic"), Cluster(num_clusters=4), 0.5, (8, 8), SPEC.mean,
                              SPEC.std)
    keep, fallbacks = selector(torch.randn(3, 3, 64, 64))
    assert keep.shape == (3, 32) and fallbacks == 0 and torch.equal(keep, keep.sort(dim=1).values)
    with pytest.raises(ConfigError, match="data.init_args.scores"):
        JuicerDataModule(selection="cluster", scores="sidecar", data_spec=SPEC)
