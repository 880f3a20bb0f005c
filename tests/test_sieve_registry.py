"""The sieve registry and the ``sieve`` command: short names, class_path / init_args, a sieve added in one file
(here: in this test module), config errors as one line naming the key, Random from the shard list alone."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.keeplist import check_keep_list, read_keep_list
from lightning_juicer.sieves import SIEVES, Candidates, Kept, Sieve
from lightning_juicer.sieves.command import main
from lightning_juicer.io.embeddings import write_embeddings
from lightning_juicer.sieves.neighbors import normalise
from lightning_juicer.sieves.random import Random
from lightning_juicer.sieves.run import run_sieve
from lightning_juicer.sieves.semdedup import SemDeDup
from tests.conftest import REPO

CONFIG = str(REPO / "configs" / "preprocess" / "sieve.yaml")


@SIEVES.register("largest_coordinate")
@dataclass
class LargestCoordinate(Sieve):
    """A sieve added the way a user adds one: keep the rows with the largest value of one image coordinate."""

    needs = ("image",)
    coordinate: int = 0

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        values = candidates.arrays["image"][:, self.coordinate]
        return Kept(np.sort(np.argsort(-values, kind="stable")[:n_keep]), {"looked_at": len(candidates)})


@pytest.fixture
def embeddings(tmp_path):
    """Two embeddings files of 10 samples each (unit rows, image = text)."""
    x = normalise(np.random.default_rng(0).normal(size=(20, 6)))
    for part in range(2):
        rows = slice(10 * part, 10 * part + 10)
        keys = [f"s{i:02d}" for i in range(20)][rows]
        write_embeddings(tmp_path / f"0000{part}.emb.parquet", keys, {"image": x[rows], "text": x[rows]},
                         {"shard": f"0000{part}.tar", "temperature": 0.07})
    return str(tmp_path / "{00000..00001}.emb.parquet"), x


def test_a_sieve_added_in_one_file_runs_through_the_command_by_its_short_name(embeddings, tmp_path, capsys):
    files, x = embeddings
    out = tmp_path / "keep.json"
    info = main(["--config", CONFIG, "--sieve", "largest_coordinate", "--sieve.init_args.coordinate", "3",
                 "--embeddings", files, "--out", str(out), "--fraction", "0.3"])
    expected = {f"s{i:02d}" for i in np.argsort(-x[:, 3])[:6]}
    keep = read_keep_list(out)
    assert {k for keys in keep.shards.values() for k in keys} == expected and len(keep) == 6
    assert keep.info["sieve"] == "largest_coordinate" and keep.info["params"] == {"coordinate": 3, "seed": 0}
    assert info["counts"] == {"degenerate_embedding": 0, "looked_at": 20}
    assert "kept:    6 of 20 (0.3000, target 0.3)" in capsys.readouterr().out


def test_short_names_class_paths_and_print_config(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--config", CONFIG, "--sieve=semdedup", "--sieve.init_args.clusters", "50", "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning_juicer.sieves.semdedup.SemDeDup" in printed and "clusters: 50" in printed
    assert "eps: null" in printed and "fraction: 0.5" in printed
    assert SIEVES.build("semdedup") == SemDeDup() and SIEVES.get("random") is Random


@pytest.mark.parametrize("yaml_sieve, expected", [
    ("d4", "class_path: lightning_juicer.sieves.d4.D4"),
    ("{class_path: cluster, init_args: {clusters: 7}}", "clusters: 7"),
    ("Cluster", "class_path: lightning_juicer.sieves.cluster.Cluster"),
])
def test_a_config_file_names_the_sieve_by_short_name_or_class(tmp_path, capsys, yaml_sieve, expected):
    (tmp_path / "sieve.yaml").write_text(f"sieve: {yaml_sieve}\nfraction: 0.25\n")
    with pytest.raises(SystemExit):
        main(["--config", CONFIG, "--config", str(tmp_path / "sieve.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert expected in printed and "fraction: 0.25" in printed and "niter: 20" in printed
    assert set(SIEVES) >= {"random", "clip_score", "cluster", "semdedup", "d4", "neg_clip_loss", "norm_sim", "d2"}


@pytest.mark.parametrize("argv, message", [
    (["--sieve", "semdedupe"], "sieve: 'semdedupe' is not a sieve; choose from "),
    (["--sieve", "semdedup", "--sieve.init_args.clusters", "0"], "sieve.init_args.clusters: 0 must be >= 1"),
    # jsonargparse accepts both spellings of a sieve's key, --sieve.init_args.clusterz and --sieve.clusterz
    (["--sieve", "semdedup", "--sieve.init_args.clusterz", "3"], r"sieve(\.init_args)?\.clusterz: unknown key"),
    (["--sieve", "semdedup", "--sieve.init_args.eps", "2.5"], r"sieve.init_args.eps: 2.5 is outside \[0, 2\)"),
    (["--sieve", "d4", "--sieve.init_args.dedup_fraction", "0"], r"sieve.init_args.dedup_fraction: 0.0 is outside"),
    (["--sieve", "cluster", "--sieve.init_args.embedding", "txt"], r"sieve(\.init_args)?\.embedding: Expected a"),
    (["--sieve", "norm_sim"], "sieve.init_args.target: norm_sim needs the embeddings files of a target set"),
    (["--sieve", "norm_sim", "--sieve.init_args.target", "t", "--sieve.init_args.p", "3"], "sieve.init_args.p: "),
    (["--sieve", "neg_clip_loss", "--sieve.init_args.repeats", "0"], "sieve.init_args.repeats: 0 must be >= 1"),
    (["--sieve", "d2", "--sieve.init_args.index", "annoy"], r"sieve(\.init_args)?\.index: Expected a"),
    (["--sieve", "d2", "--sieve.init_args.index", "hnsw", "--sieve.init_args.gpu", "true"],
     "sieve.init_args.index: hnsw runs on the CPU only"),
    (["--sieve", "random", "--fraction", "0"], r"fraction: 0.0 is outside \(0, 1\]"),
    (["--out", "k.json"], "sieve: not set; choose from "),
    (["--sieve", "random"], "out: not set"),
])
def test_config_errors_name_the_key(tmp_path, argv, message):
    argv = argv if "--out" in argv or "out: not set" in message else [*argv, "--out", str(tmp_path / "k.json")]
    with pytest.raises(ConfigError, match=f"^{message}"):
        main(["--config", CONFIG, *argv])


def test_inputs_that_do_not_fit_the_sieve_are_refused(embeddings, tmp_path):
    files, _ = embeddings
    out = str(tmp_path / "k.json")
    with pytest.raises(ConfigError, match="^shards: sieve semdedup reads the image embeddings"):
        run_sieve({"sieve": "semdedup", "shards": "x.tar", "out": out})
    with pytest.raises(ConfigError, match="^shards: give the embeddings files or the shards, not both"):
        run_sieve({"sieve": "random", "shards": "x.tar", "embeddings": files, "out": out})
    with pytest.raises(ConfigError, match="^embeddings: not set; .* \\(or shards, for this sieve\\)"):
        run_sieve({"sieve": "random", "out": out})
    with pytest.raises(ConfigError, match="^embeddings: the files hold no 'cls' embeddings"):
        run_sieve({"sieve": {"class_path": "cluster", "init_args": {"embedding": "cls"}}, "embeddings": files,
                   "out": out})


def _tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_random_runs_from_the_shard_list_alone_and_equals_random_over_embeddings(tiny_synthetic, tmp_path):
    urls = sorted(str(p) for p in Path(tiny_synthetic.train_shards).parent.glob("*.tar"))
    keys = [[s["__key__"] for s in wds.tarfile_samples(iter([{"url": u}]))] for u in urls]
    ones = np.ones((64, 4), np.float32)  # embeddings that Random never looks at
    for url, shard_keys in zip(urls, keys):
        write_embeddings(tmp_path / Path(url).name.replace(".tar", ".emb.parquet"), shard_keys,
                         {"image": ones, "text": ones}, {"shard": Path(url).name, "shard_url": url})
    from_shards = run_sieve({"sieve": "random", "shards": tiny_synthetic.train_shards, "fraction": 0.3, "seed": 5,
                             "out": str(tmp_path / "shards.json")})
    from_embeddings = run_sieve({"sieve": "random", "embeddings": str(tmp_path / "{00000..00003}.emb.parquet"),
                                  "fraction": 0.3, "seed": 5, "out": str(tmp_path / "emb.json")})
    assert from_shards["num_candidates"] == 256 and from_shards["num_kept"] == round(0.3 * 256)
    assert from_shards["counts"] == {"degenerate_embedding": 0, "no_image": 0} and from_shards["embeddings"] == []
    by_shards, by_embeddings = read_keep_list(tmp_path / "shards.json"), read_keep_list(tmp_path / "emb.json")
    assert by_shards.shards == by_embeddings.shards
    assert sum(map(len, check_keep_list(by_shards, urls).values())) == 77  # the DataModule's own check accepts it
    other_seed = run_sieve({"sieve": "random", "shards": tiny_synthetic.train_shards, "fraction": 0.3, "seed": 6,
                            "out": str(tmp_path / "seed6.json")})
    assert read_keep_list(tmp_path / "seed6.json").shards != by_shards.shards and other_seed["num_kept"] == 77


def test_random_from_shards_counts_keys_without_an_image(tmp_path):
    url = _tar(tmp_path / "00000.tar", [("a.jpg", b"x"), ("a.txt", b"a"), ("b.txt", b"no image"), ("c.PNG", b"y"),
                                        ("dir.v1/d.jpg", b"z"), ("...jpg", b"no key"), ("e.seg.webp", b"w")])
    info = run_sieve({"sieve": "random", "shards": url, "fraction": 1.0, "out": str(tmp_path / "k.json")})
    assert info["num_candidates"] == 4 and info["counts"]["no_image"] == 1
    assert read_keep_list(tmp_path / "k.json").shards == {"00000.tar": {"a", "c", "dir.v1/d", "e"}}
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ConfigError, match="^shards: .*bad.tar cannot be read as a tar shard"):
        run_sieve({"sieve": "random", "shards": str(tmp_path / "bad.tar"), "out": str(tmp_path / "k2.json")})


def test_unit_rows_are_not_copied_again_and_other_rows_are_normalised_once(monkeypatch):
    from lightning_juicer.sieves import neighbors

    monkeypatch.setattr(neighbors, "NORM_BLOCK", 7)  # several blocks
    raw = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    raw[4] = 0.0
    unit = neighbors.normalise(raw)
    assert unit is not raw and unit.dtype == np.float32 and not unit[4].any()
    np.testing.assert_allclose(np.linalg.norm(np.delete(unit, 4, axis=0), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12), atol=1e-7)
    assert neighbors.normalise(unit) is unit  # the sieve runner normalises once; the algorithms then copy nothing
    half = neighbors.normalise(raw.astype(np.float16))
    assert half.dtype == np.float32 and np.abs(half - unit).max() < 2e-3
    own = raw.copy()
    assert neighbors.normalise_(own) is own and np.array_equal(own, unit)
    with pytest.raises(ValueError, match="float32"):
        neighbors.normalise_(raw.astype(np.float16))
