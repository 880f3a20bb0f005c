"""Auditing evidence and juiced captions against the real-photo benchmark's ground truth (benchmarks/evidence_real.py)."""

from __future__ import annotations

import pytest

from lightning_juicer.realphoto.audit import EvidenceAudit, gained_wrong_objects, objects_named


def test_objects_are_found_by_any_synonym_and_by_extra_class_names_as_whole_words():
    assert objects_named("NWT a tee next to a pair of pants") == {"t-shirt", "trousers"}
    assert objects_named("a purse with a ring", ["ring", "star"]) == {"bag", "ring"}
    assert objects_named("an earring, ringing bells, a starfish", ["ring", "star"]) == set()  # not whole words


@pytest.mark.parametrize(("original", "juiced", "truth", "gained"), [
    ("a photo of a top", "a photo of a top with a handbag", ["t-shirt"], {"bag"}),  # a synonym of a wrong class
    ("a photo of a top", "a photo of a top with a handbag", ["t-shirt", "bag"], set()),  # the bag is in the image
    ("a sandal for sale", "a sandal for sale", ["sneaker"], set()),  # wrong already: not gained in the pass
    ("a sandal for sale", "a sandal and a boot for sale", ["sneaker"], {"ankle boot"}),
    ("check out my latestfind", "check out my latest find with a ring", ["coat"], {"ring"}),  # a shape class
    ("a coat", None, ["dress"], set()),  # no juiced caption: nothing gained
])
def test_gained_wrong_objects(original, juiced, truth, gained):
    assert gained_wrong_objects(original, juiced, truth, ["ring", "circle"]) == gained


def test_a_wrong_object_hidden_by_a_typo_in_the_original_is_not_gained_when_the_json_names_it():
    original, repaired = "a ohoto of a sbeaker via tumblr", "a photo of a sneaker via tumblr"  # a pullover, called a sneaker
    assert gained_wrong_objects(original, repaired, ["pullover"]) == {"sneaker"}  # the matcher cannot read "sbeaker"
    assert gained_wrong_objects(original, repaired, ["pullover"], original_objects=["sneaker"]) == set()
    assert gained_wrong_objects(original, repaired + " and a bag", ["pullover"], original_objects=["sneaker"]) == {"bag"}


def test_audit_shares():
    audit = EvidenceAudit()
    audit.add(["coat"], ["coat", "bag"], "a jacket", "a jacket with a bag", key="a")  # 1 of 2 right, gained bag
    audit.add(["dress"], ["sandal"], "a gown", "a gown", key="b")  # only wrong evidence, not woven
    audit.add(["shirt"], [], "a blouse", "a blouse", key="c")
    audit.add(["bag"], [], "a purse")  # no juiced caption: not a caption
    d = audit.as_dict()
    assert d["samples"] == 4 and d["evidence_classes"] == 3 and d["evidence_precision"] == pytest.approx(1 / 3)
    assert d["share_with_evidence"] == 0.5 and d["share_only_wrong_evidence"] == 0.25
    assert d["captions"] == 3 and d["gained_wrong_object"] == 1 and d["share_gained_wrong_object"] == pytest.approx(1 / 3)
    assert d["examples"][0]["key"] == "a" and d["examples"][0]["gained"] == ["bag"]
    assert EvidenceAudit().as_dict()["evidence_precision"] is None
