"""``io.tars.tar_members``, the shard reader of the training stream and the passes, against Python's ``tarfile``:
the same regular files, names and bytes for every tar flavour a shard may come in, and a ``tarfile.ReadError`` for
what is broken (where tarfile itself would stop silently on a bad header mid-shard, it raises)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest
import webdataset as wds

from lightning_juicer.data.drops import DropCounter
from lightning_juicer.io.tars import tar_members, tar_samples

BLOCK = 512


def members_by_tarfile(raw: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def build(fmt: int, **kwargs) -> bytes:
    """A tar with what shards meet: long and unicode names, a folder, a link, an empty file, meta files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, **kwargs) as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, mtime: float = 1.5e9) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data) if kind == tarfile.REGTYPE else 0, mtime
            if kind == tarfile.SYMTYPE:
                info.linkname = "k0.jpg"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("sub", kind=tarfile.DIRTYPE)
        for i, size in enumerate((0, 1, 511, 512, 513, 5000)):
            add(f"k{i}.jpg", bytes(range(256)) * (size // 256) + bytes(size % 256), mtime=1.5e9 + 0.25)
            add(f"k{i}.txt", f"caption {i}".encode())
        add("link.jpg", kind=tarfile.SYMTYPE)
        add("folder/" * 20 + "deep.txt", b"a name longer than 100 bytes")  # ustar: prefix field; gnu: 'L'; pax: path
        add("caf\u00e9 \U0001f415.txt", "unicode name".encode())
        add("__meta__.json", b"{}")
    return buffer.getvalue()


def ustar() -> bytes:
    """ustar cannot hold the unicode name (nor names over 255 bytes): its own members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("a/" * 40 + "x.jpg", b"prefix-split name"), ("y.txt", b"plain"), ("z.bin", bytes(1500))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def webdataset_shard() -> bytes:
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as sink:  # a pax header per member (fractional mtime), as img2dataset writes
        for i in range(5):
            sink.write({"__key__": f"{i:05d}", "jpg": bytes([i]) * (300 * i + 7), "txt": f"sample {i}"})
    return buffer.getvalue()


FLAVOURS = {
    "pax": lambda: build(tarfile.PAX_FORMAT),
    "pax_global": lambda: build(tarfile.PAX_FORMAT, pax_headers={"comment": "a global header"}),
    "gnu": lambda: build(tarfile.GNU_FORMAT),
    "ustar": ustar,
    "webdataset": webdataset_shard,
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("compression", ["none", "gzip", "bz2", "xz"])
def test_every_tar_flavour_reads_like_tarfile(flavour, compression):
    raw = FLAVOURS[flavour]()
    compress = {"none": lambda b: b, "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression]
    expected = members_by_tarfile(compress(raw))
    assert len(expected) >= 3
    assert list(tar_members(io.BytesIO(compress(raw)))) == expected
    if flavour == "pax":
        names = [name for name, _ in expected]
        assert "folder/" * 20 + "deep.txt" in names and "caf\u00e9 \U0001f415.txt" in names and "link.jpg" not in names


def test_a_stream_cut_anywhere_raises_read_error_after_the_complete_members():
    raw = webdataset_shard()
    complete = members_by_tarfile(raw)
    end = len(raw.rstrip(b"\0")) // BLOCK * BLOCK + BLOCK  # the first zero block after the last member's data
    for cut in [*range(0, end, 97), *range(0, end, BLOCK)]:
        got = []
        with pytest.raises(tarfile.ReadError, match=r"byte \d+|empty file"):
            for member in tar_members(io.BytesIO(raw[:cut])):
                got.append(member)
        assert got == complete[: len(got)]  # what came before the cut, each member whole
    with tarfile.open(fileobj=io.BytesIO(raw[: 4 * BLOCK]), mode="r|") as tar:
        assert [m.name for m in tar]  # tarfile reads a shard cut at a member boundary as a shorter shard, silently
    assert list(tar_members(io.BytesIO(raw[: end + BLOCK]))) == complete  # cut in the closing zero blocks: whole


def test_a_bad_header_mid_shard_raises_where_tarfile_stops_silently():
    raw = bytearray(webdataset_shard())
    middle = len(raw) // 2 // BLOCK * BLOCK
    offset = next(o for o in range(middle, len(raw), BLOCK) if raw[o + 257 : o + 262] == b"ustar")
    raw[offset + 10] ^= 0xFF  # a flipped byte in a header's name: its checksum no longer matches
    with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r|") as tar:
        silently_shorter = [m.name for m in tar if m.isreg()]
    assert len(silently_shorter) < 10
    with pytest.raises(tarfile.ReadError, match=rf"invalid header at byte {offset}: bad checksum"):
        list(tar_members(io.BytesIO(bytes(raw))))
    with pytest.raises(tarfile.ReadError, match="empty file"):
        list(tar_members(io.BytesIO(b"")))


def test_a_broken_shard_is_counted_once_and_the_next_shard_is_read(tmp_path):
    raw = webdataset_shard()
    (tmp_path / "cut.tar").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "good.tar").write_bytes(raw)
    drops = DropCounter()
    stage = tar_samples(lambda name, url: drops.drop("bad_key", name), drops.handler)
    samples = list(stage(iter([{"url": str(tmp_path / "cut.tar")}, {"url": str(tmp_path / "good.tar")}])))
    cut = [s for s in samples if s["__url__"].endswith("cut.tar")]
    assert 0 < len(cut) < 5  # the samples before the cut; the last may lack the member the cut took (counted later)
    assert all({"jpg", "txt"} <= set(s) for s in cut[:-1]) and [s["__key__"] for s in cut] == [f"{i:05d}" for i in range(len(cut))]
    assert [s["__key__"] for s in samples if s["__url__"].endswith("good.tar")] == [f"{i:05d}" for i in range(5)]
    assert dict(drops.total) == {"unreadable_shard": 1}


def test_a_header_with_a_negative_size_is_refused_not_read_to_the_end():
    raw = bytearray(ustar())
    raw[124:136] = b"\xff" * 12  # base-256 -1, with a checksum that matches
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:BLOCK]):06o}\0 ".encode()
    with pytest.raises(tarfile.ReadError, match="invalid header at byte 0: negative size -1"):
        list(tar_members(io.BytesIO(bytes(raw))))


class Trickle(io.RawIOBase):
    """A raw stream that returns at most 100 bytes per read, as a socket or pipe may."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.data.read(min(100, size) if size >= 0 else 100)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_stream_returning_short_reads_is_read_whole(compression):
    raw = webdataset_shard()
    raw = gzip.compress(raw) if compression == "gzip" else raw
    assert list(tar_members(Trickle(raw))) == members_by_tarfile(raw)
