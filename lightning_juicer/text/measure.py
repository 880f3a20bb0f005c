"""What a text backend did to a set of captions: accepted rewrites, fallbacks by reason, evidence woven in, and
objects the outputs named that are neither evidence nor in the original (before and after validation).

Used by ``benchmarks/text_branch.py`` on the real-photo benchmark; the text pass itself counts the same
reasons per shard in its manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lightning_juicer.text.prompts import Request
from lightning_juicer.text.validation import Validator, clean_output, evidence_woven, invented_classes


@dataclass
class Rewrite:
    """One caption through a backend: its evidence, the raw answer, the stored caption and the reason (if any)."""

    key: str
    original: str
    evidence: list[tuple[str, float]]
    truth: list[str] | None = None  # classes really in the image, when known
    raw: str | None = None  # None: not sent
    caption: str = ""
    reason: str | None = None
    status: str = ""  # rewritten | unchanged | fallback


@dataclass
class Outcome:
    """Totals over a set of rewrites."""

    captions: int = 0
    sent: int = 0
    rewritten: int = 0
    unchanged: int = 0
    fallback: Counter = field(default_factory=Counter)
    evidence_offered: int = 0       # evidence classes the original did not name (what could be woven in)
    evidence_woven: int = 0         # ... that an accepted rewrite names
    woven_wrong: int = 0            # ... woven in but not in the image (truth known)
    raw_invented: int = 0           # cleaned raw outputs naming a class outside evidence and original
    accepted_invented: int = 0      # accepted rewrites doing so (the validator must keep this at 0)
    accepted_wrong_object: int = 0  # accepted rewrites naming a class that is not in the image (truth known)
    original_wrong_object: int = 0  # originals naming a class that is not in the image (truth known)

    def as_dict(self) -> dict:
        """Plain JSON-able totals."""
        out = dict(self.__dict__)
        out["fallback"] = dict(sorted(self.fallback.items()))
        return out


def named_in(text: str, classnames: Iterable[str]) -> set[str]:
    """The classes a text names (class-name matching of the validator: synonyms split on '/', any inflection)."""
    return set(evidence_woven("", text, list(classnames)))


def run_rewrites(items: Sequence[Rewrite], rewrite: Callable[[list[Request]], list[str]], validator: Validator,
                 classnames: Sequence[str], batch_size: int = 16,
                 on_batch: Callable[[int], None] | None = None) -> None:
    """Fill ``raw``, ``caption``, ``reason`` and ``status`` of each item, sending what passes the input checks;
    ``on_batch(n)`` after each batch with the number of items sent so far."""
    pending = []
    for item in items:
        reason = validator.check_input(item.original)
        if reason:
            item.caption, item.reason, item.status = item.original, reason, "fallback"
        else:
            pending.append(item)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        outputs = rewrite([Request(i.original, i.evidence) for i in batch])
        for item, raw in zip(batch, outputs):
            names = [n for n, _ in item.evidence]
            item.raw = raw
            item.caption, item.reason = validator(item.original, raw, names, classnames)
            same = item.caption == " ".join(item.original.split())
            item.status = "fallback" if item.reason else ("unchanged" if same else "rewritten")
        if on_batch is not None:
            on_batch(start + len(batch))


def summarise(items: Iterable[Rewrite], classnames: Sequence[str],
              named: Callable[[str], set[str]] | None = None) -> Outcome:
    """Totals; ``named(text)`` gives the classes a text names (default: the validator's class-name matching)."""
    out = Outcome()
    for item in items:
        names = [n for n, _ in item.evidence]
        out.captions += 1
        out.sent += item.raw is not None
        if item.status == "fallback":
            out.fallback[item.reason] += 1
        else:
            out.rewritten += item.status == "rewritten"
            out.unchanged += item.status == "unchanged"
        out.evidence_offered += len(set(names) - named_in(item.original, names))
        accepted = item.status == "rewritten"
        if item.raw is not None and invented_classes(item.original, clean_output(item.raw), names, classnames):
            out.raw_invented += 1
        if accepted:
            woven = evidence_woven(item.original, item.caption, names)
            out.evidence_woven += len(woven)
            out.accepted_invented += bool(invented_classes(item.original, item.caption, names, classnames))
        if item.truth is not None:
            truth = set(item.truth)
            said = (named or (lambda text: named_in(text, classnames)))(item.original)
            out.original_wrong_object += bool(said - truth)
            if accepted:
                out.woven_wrong += len(set(woven) - truth)
                now = (named or (lambda text: named_in(text, classnames)))(item.caption)
                out.accepted_wrong_object += bool(now - truth - said)
    return out
