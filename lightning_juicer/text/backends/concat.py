"""``concat``: the paper's concat ablation, the evidence class names appended to the caption."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_juicer.text.backends.base import BACKENDS, TextBackend
from lightning_juicer.text.prompts import Request


@BACKENDS.register("concat")
class ConcatBackend(TextBackend):
    """``caption<separator>class1<separator>class2`` (the caption unchanged without evidence)."""

    def __init__(self, separator: str = ", ") -> None:
        self.separator = separator

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Append the evidence class names."""
        return [self.separator.join([r.caption.strip(), *(name for name, _ in r.evidence)]) for r in requests]
