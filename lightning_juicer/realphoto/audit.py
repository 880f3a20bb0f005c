"""Auditing class evidence and juiced captions against the real-photo benchmark's ground truth.

Each training sample's JSON lists the classes of the items pasted on it, so for every sample one can
tell whether its evidence classes are in the image and whether its juiced caption *gained a wrong
object*: names an object that is neither in the image nor in the original caption. Objects are
found by ``named_classes`` (the Fashion-MNIST synonyms captions use) and, for evidence heads with
other classes (the synthetic governor's shapes), by the head's class names as whole words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lightning_juicer.realphoto.captions import named_classes
from lightning_juicer.realphoto.sources import FASHION_CLASSES

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in FASHION_CLASSES)


def _whole_words(names: Iterable[str], text: str) -> set[str]:
    return {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text, re.IGNORECASE)}


def objects_named(text: str, extra_names: Iterable[str] = ()) -> set[str]:
    """Objects a caption names: benchmark classes (by any synonym, as class names) and other class names given."""
    fashion = {CLASS_NAMES[c] for c in named_classes(text)}
    return fashion | _whole_words((n for n in extra_names if n not in CLASS_NAMES), text)


def gained_wrong_objects(original: str, juiced: str | None, truth: Iterable[str],
                         extra_names: Iterable[str] = (), original_objects: Iterable[str] = ()) -> set[str]:
    """Objects the juiced caption names that the image does not hold and the original caption did not name.

    ``original_objects``: classes the original names by construction (the sample JSON's ``named`` and
    ``wrong``), which a typo can hide from the synonym matcher ("a sbeaker" repaired to "a sneaker" is
    a wrong object the caption already had, not one the pass added)."""
    if juiced is None:
        return set()
    extra = tuple(extra_names)
    return objects_named(juiced, extra) - objects_named(original, extra) - set(truth) - set(original_objects)


@dataclass
class EvidenceAudit:
    """Counts over samples; ``as_dict`` gives the shares."""

    samples: int = 0
    with_evidence: int = 0
    evidence_classes: int = 0
    correct_classes: int = 0
    only_wrong: int = 0  # samples whose evidence holds no class of the image
    captions: int = 0
    gained_wrong: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, truth: Sequence[str], evidence: Sequence[str], original: str | None = None,
            juiced: str | None = None, extra_names: Iterable[str] = (), key: str = "",
            original_objects: Iterable[str] = ()) -> None:
        """One sample: its true classes, evidence class names and (optionally) both captions."""
        truth = set(truth)
        self.samples += 1
        hits = sum(name in truth for name in evidence)
        self.evidence_classes += len(evidence)
        self.correct_classes += hits
        if evidence:
            self.with_evidence += 1
            self.only_wrong += hits == 0
        if original is not None and juiced is not None:
            self.captions += 1
            gained = gained_wrong_objects(original, juiced, truth, extra_names, original_objects)
            if gained:
                self.gained_wrong += 1
                if len(self.examples) < 5:
                    self.examples.append({"key": key, "truth": sorted(truth), "evidence": list(evidence),
                                          "original": original, "juiced": juiced, "gained": sorted(gained)})

    def as_dict(self) -> dict:
        def share(a: int, b: int) -> float | None:
            return a / b if b else None

        return {
            "samples": self.samples,
            "evidence_precision": share(self.correct_classes, self.evidence_classes),
            "evidence_classes": self.evidence_classes,
            "share_with_evidence": share(self.with_evidence, self.samples),
            "share_only_wrong_evidence": share(self.only_wrong, self.samples),
            "captions": self.captions,
            "share_gained_wrong_object": share(self.gained_wrong, self.captions),
            "gained_wrong_object": self.gained_wrong,
            "examples": self.examples,
        }
