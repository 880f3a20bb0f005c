"""The io/ helpers every package shares: remote URLs, atomic writes, class-name files, dataset folders."""

from __future__ import annotations

import os

import pytest

from lightning_juicer.errors import ConfigError
from lightning_juicer.io import atomic
from lightning_juicer.io.atomic import atomic_write, atomic_write_text
from lightning_juicer.io.classnames import read_classnames, write_classnames
from lightning_juicer.io.dataset_dir import build_atomically, is_complete, refuse_foreign
from lightning_juicer.io.shards import expand_shards, is_remote


def test_remote_urls_are_schemes_that_are_not_local_files(tmp_path, monkeypatch):
    assert is_remote("pipe:curl -s http://x/00000.tar") and is_remote("s3://bucket/00000.tar")
    assert is_remote("https://host/a/00000.tar") and is_remote("gs:bucket/00000.tar")
    local = tmp_path / "00000.tar"
    local.write_bytes(b"")
    assert not is_remote(str(local)) and not is_remote("data/00000.tar") and not is_remote("00000.tar")
    odd = tmp_path / "x:00000.tar"  # a local file whose name looks like a scheme stays local
    odd.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert not is_remote("x:00000.tar")
    assert expand_shards("x:00000.tar", "k") == ["x:00000.tar"]
    assert expand_shards("pipe:cat a.tar", "k") == ["pipe:cat a.tar"]
    with pytest.raises(ConfigError, match="k: shard file not found: missing.tar"):
        expand_shards("missing.tar", "k")


def test_atomic_write_fsyncs_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = atomic_write_text(tmp_path / "sub" / "a.json", "[1]\n")
    assert path.read_text() == "[1]\n" and len(synced) == 1

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "[1]\n" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_classnames_round_trip_and_refusals(tmp_path):
    write_classnames(tmp_path / "names.txt", ["ankle boot", "t-shirt"])
    assert (tmp_path / "names.txt").read_text() == "ankle boot\nt-shirt\n"
    assert read_classnames(tmp_path / "names.txt") == ["ankle boot", "t-shirt"]
    with pytest.raises(ConfigError, match="^governor.classnames: classnames file not found"):
        read_classnames(tmp_path / "none.txt", "governor.classnames")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="^k: classnames file .* is empty"):
        read_classnames(tmp_path / "empty.txt", "k")


def test_a_dataset_folder_appears_whole_or_not_at_all(tmp_path):
    root = tmp_path / "data"

    def broken(out):
        (out / "part.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_atomically(root, "dataset.json", broken)
    assert not root.exists() and list(tmp_path.iterdir()) == []
    build_atomically(root, "dataset.json", lambda out: (out / "dataset.json").write_text("{}"))
    assert is_complete(root, "dataset.json") and list(tmp_path.iterdir()) == [root]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(ConfigError, match="^root: .*foreign is not empty but has no dataset.json"):
        refuse_foreign(foreign, "dataset.json", "delete it", key="root")
