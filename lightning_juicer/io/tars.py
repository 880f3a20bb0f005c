"""Tar shards -> webdataset samples, counting members that cannot belong to any sample.

webdataset groups a tar's members into samples by splitting each name into key and extension
(``base_plus_ext``: the key runs up to the first dot of the last path component) and silently
skips a member whose name has no such split: ``...jpg`` (key ``..``), ``.jpg``, ``README``. Here
each such run of members is reported once to ``on_unkeyed(name, url)``, so the sample is counted
with a reason (``bad_key``) instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # a sample's image member, first found in this order
CAPTION_EXTS = ("txt",)  # its caption member


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
        files = tar_file_expander(url_opener(src, handler=handler), handler=handler)
        return group_by_keys(keyed_members(files, on_unkeyed), handler=handler)

    return stage
