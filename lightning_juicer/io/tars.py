"""Tar shards -> webdataset samples, counting members that cannot belong to any sample.

webdataset groups a tar's members into samples by splitting each name into key and extension
(``base_plus_ext``: the key runs up to the first dot of the last path component) and silently
skips a member whose name has no such split: ``...jpg`` (key ``..``), ``.jpg``, ``README``. Here
each such run of members is reported once to ``on_unkeyed(name, url)``, so the sample is counted
with a reason (``bad_key``) instead of vanishing.

Reading the tar itself is ``tar_members``, not Python's ``tarfile`` (which webdataset uses): it walks
the 512-byte headers in a few slices per member instead of tarfile's field-by-field parsing, which
costs ~0.1 ms per member when every member carries a pax header (``wds.TarWriter`` writes one for
its fractional mtime, so img2dataset's shards all do). Per sample that was ~6 % of a training
loader worker's time (docs/benchmarks.md, loader vs limit). It reads what tarfile reads for shards:
ustar, pax (local and global ``path`` / ``size``), GNU long names, gzip / bzip2 / xz compressed
streams; it refuses what tarfile would refuse (bad checksum, truncation) with a ``tarfile.ReadError``,
and also two faults tarfile lets pass silently, losing the rest of the shard: a header it cannot parse
in the middle of a shard, and a stream cut at a member boundary (no end-of-archive marker).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from webdataset.tariterators import base_plus_ext, group_by_keys, url_opener

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # a sample's image member, first found in this order
CAPTION_EXTS = ("txt",)  # its caption member

BLOCK = 512
REGULAR_TYPES = (b"0", b"\0", b"7")  # regular file (ustar, old tar), contiguous file
POSIX_MAGIC = b"ustar\x0000"
COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", bz2.BZ2File),
              (b"\xfd7zXZ\x00", lzma.LZMAFile))
SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta (and its meta_prefix/suffix): __x__ members


def _field(block: bytes, start: int, end: int) -> bytes:
    return block[start:end].split(b"\0", 1)[0]


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when its first byte is 0x80 / 0xff (as tarfile's ``nti``)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 256  # the checksum field counts as eight spaces
    return stored == unsigned or stored == 256 + sum(struct.unpack_from("148b8x356b", block))


def _pax(data: bytes) -> dict[bytes, bytes]:
    """Records ``"<length> <key>=<value>\\n"`` of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= space - pos or data[pos + length - 1 : pos + length] != b"\n":
            raise ValueError(f"bad pax record at byte {pos}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key] = value
        pos += length
    return records


class _Prepended:
    """A stream whose first bytes were already read (to sniff the compression), put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            head, self.head = self.head, b""
            return head + self.stream.read()
        head, self.head = self.head[:size], self.head[size:]
        return head + (self.stream.read(size - len(head)) if size > len(head) else b"")


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of a tar stream, in order; a malformed or cut stream raises ``tarfile.ReadError``.

    Names are decoded as tarfile does (UTF-8, undecodable bytes kept as surrogates); pax ``path`` / ``size``
    and GNU long names (``L``) apply to the member that follows, global pax headers (``g``) to all that
    follow; directories, links and other non-file members are skipped.
    """
    def read(size: int) -> bytes:
        """``size`` bytes, fewer only at the end (a raw or network stream may return less per call)."""
        data = stream.read(size)
        while 0 < len(data) < size and (more := stream.read(size - len(data))):
            data += more
        return data

    def exactly(size: int) -> bytes:
        data = read(size)
        if len(data) != size:
            raise tarfile.ReadError(f"unexpected end of data at byte {offset} (wanted {size} bytes, got {len(data)})")
        return data

    block = read(BLOCK)
    for magic, opener in COMPRESSED:
        if block.startswith(magic):
            stream = opener(_Prepended(block, stream))
            block = read(BLOCK)
            break
    if not block:
        raise tarfile.ReadError("empty file")
    offset, pax_global, pending = 0, {}, {}

    while True:
        if not block:  # tarfile ends quietly here: a shard cut at a member boundary would lose its tail unseen
            raise tarfile.ReadError(f"the stream ends at byte {offset} without the end-of-archive marker (cut short?)")
        if len(block) != BLOCK:
            raise tarfile.ReadError(f"truncated header at byte {offset}")
        if not block.strip(b"\0"):
            return  # end-of-archive marker
        kind = block[156:157]
        try:
            if not _checksum_ok(block):
                raise ValueError("bad checksum")
            size = _number(block[124:136])
            if size < 0:
                raise ValueError(f"negative size {size}")
            if kind in (b"x", b"g", b"L", b"K"):  # extended headers describe the member that follows
                data = exactly(-(-size // BLOCK) * BLOCK)[:size]
                if kind == b"x":
                    pending.update(_pax(data))
                elif kind == b"g":
                    pax_global.update(_pax(data))
                elif kind == b"L":
                    pending[b"path"] = data.rstrip(b"\0")
                offset += BLOCK + len(data) + -len(data) % BLOCK
                block = read(BLOCK)
                continue
            extended = {**pax_global, **pending}
            pending = {}
            if b"size" in extended:
                size = int(extended[b"size"])
                if size < 0:
                    raise ValueError(f"negative pax size {size}")
        except ValueError as exn:
            raise tarfile.ReadError(f"invalid header at byte {offset}: {exn}") from None
        name = _field(block, 0, 100)
        if block[257:265] == POSIX_MAGIC:
            prefix = _field(block, 345, 500)
            name = prefix + b"/" + name if prefix else name
        name = extended.get(b"path", name)
        if kind == b"S":
            raise tarfile.ReadError(f"GNU sparse member {name!r} at byte {offset} is not supported")
        if kind in REGULAR_TYPES:
            data = exactly(size)
            read(-size % BLOCK)  # padding (a stream cut in it fails at the next header read)
            yield name.decode("utf-8", "surrogateescape"), data
        elif kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):  # links, devices, folders and fifos have no data
            exactly(-(-size // BLOCK) * BLOCK)
        offset += BLOCK + -(-size // BLOCK) * BLOCK
        block = read(BLOCK)


def tar_files(sources: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's ``tar_file_expander`` on ``tar_members``: ``{fname, data, __url__}`` per file, ``{}`` after each shard."""
    for source in sources:
        url, stream = source["url"], source["stream"]
        try:
            for name, data in tar_members(stream):
                if SKIP_META.match(name):
                    continue
                yield {"fname": name, "data": data, "__url__": url}
        except Exception as exn:
            exn.args = exn.args + (url,)
            if not handler(exn):
                break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        yield {}  # the end of a shard: its last sample is complete (also after an error)


def keyed_members(files: Iterable[dict], on_unkeyed: Callable[[str, str], None]) -> Iterator[dict]:
    """Pass tar members whose name splits into key + extension; report the others once per name stem."""
    last = None
    for member in files:
        name = member.get("fname") if member else None
        if name is not None and base_plus_ext(name)[0] is None:
            stem = (member.get("__url__"), name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name)
            if stem != last:
                on_unkeyed(name, str(member.get("__url__")))
            last = stem
            continue
        last = None
        yield member


def tar_samples(
    on_unkeyed: Callable[[str, str], None], handler: Callable[[Exception], bool]
) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """A pipeline stage like ``wds.tarfile_to_samples(handler=...)`` that reports unkeyable members."""

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        files = tar_files(url_opener(src, handler=handler), handler)
        return group_by_keys(keyed_members(files, on_unkeyed), handler=handler)

    return stage
