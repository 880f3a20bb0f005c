"""Choosing the evidence threshold ε (Eq. 4) on held-out images, so that evidence is right or absent.

A head's probabilities are not precisions: a head fitted on a few hundred images is overconfident
outside them (a fixed ε = 0.7 gave 34 % precise evidence on the real-photo benchmark's held-out
images). ``calibrate_threshold`` looks at the evidence the vision pass would give (``class_evidence``:
classes with p > ε, at most ``max_classes``) on labelled held-out images for every candidate ε (the
probabilities that occur there) and picks the smallest ε at which the evidence precision (share of
evidence classes that are in the image) reaches ``target_precision`` and stays there for every larger
ε, counting only thresholds that leave at least ``min_evidence`` evidence classes (a precision over
two classes says nothing). When no ε qualifies the head *abstains*: its recorded threshold is
``ABSTAIN_THRESHOLD`` (1.0; no sigmoid probability exceeds it), so it gives no evidence at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lightning_juicer.errors import ConfigError

ABSTAIN_THRESHOLD = 1.0


@dataclass
class Calibration:
    """The chosen ε, whether the head abstains, and the calibration figures at that ε."""

    threshold: float
    abstain: bool
    target_precision: float
    precision: float | None  # on the calibration images at ``threshold`` (None: no evidence)
    evidence_classes: int
    images: int
    min_evidence: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evidence_outcomes(probs: torch.Tensor, targets: torch.Tensor, max_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every class that could become evidence (an image's top ``max_classes``): its p and whether it is in the image."""
    k = min(max_classes, probs.shape[1])
    if k <= 0:
        return torch.empty(0), torch.empty(0, dtype=torch.bool)
    top = probs.float().topk(k, dim=1)
    hits = torch.gather(targets > 0, 1, top.indices)
    return top.values.flatten(), hits.flatten()


def calibrate_threshold(probs: torch.Tensor, targets: torch.Tensor, target_precision: float = 0.95,
                        max_classes: int = 3, min_evidence: int = 10) -> Calibration:
    """The smallest ε whose evidence precision on these labelled images is >= target (see module docs)."""
    if not 0.0 < target_precision <= 1.0:
        raise ConfigError(f"target_precision: {target_precision} must be in (0, 1]")
    if min_evidence < 1:
        raise ConfigError(f"min_evidence: {min_evidence} must be at least 1")
    p, hit = evidence_outcomes(probs, targets, max_classes)
    n = int(probs.shape[0])

    def abstain(reason: str) -> Calibration:
        return Calibration(ABSTAIN_THRESHOLD, True, target_precision, None, 0, n, min_evidence, reason)

    if n == 0:
        return abstain("no calibration images (give a larger val_root or calibration_fraction)")
    if p.numel() == 0:
        return abstain("no evidence is possible (max_classes 0)")
    order = p.argsort(descending=True)
    p, hit = p[order], hit[order].double()
    # Prefix i (the i+1 most probable candidates) is the evidence at any ε in [p[i+1], p[i]).
    given = torch.arange(1, len(p) + 1, dtype=torch.float64)
    precision = hit.cumsum(0) / given
    counted = given >= min_evidence
    below = (precision < target_precision) & counted
    # The largest prefix (smallest ε) such that no counted prefix up to it falls below the target.
    first_bad = int(below.nonzero()[0]) if below.any() else len(p)
    ok = counted.clone()
    ok[first_bad:] = False
    # Only cut between distinct probabilities: evidence is p > ε, so equal p enter together.
    distinct = torch.ones_like(ok)
    distinct[:-1] = p[:-1] > p[1:]
    ok &= distinct
    if not ok.any():
        best = float(precision[counted].max()) if counted.any() else None
        how = f"best {best:.2f}" if best is not None else f"fewer than {min_evidence} evidence classes"
        return abstain(f"no threshold reaches precision {target_precision} on {n} calibration images ({how})")
    i = int(ok.nonzero()[-1])
    # Midway to the next candidate, so that float noise between passes does not move a class across ε.
    threshold = (float(p[i]) + (float(p[i + 1]) if i + 1 < len(p) else 0.0)) / 2
    return Calibration(threshold, False, target_precision, float(precision[i]), i + 1, n, min_evidence,
                       f"ε={threshold:.4f}: precision {float(precision[i]):.3f} over {i + 1} evidence classes "
                       f"on {n} calibration images")


def describe_calibration(cal: Calibration) -> str:
    """One line for the command's output."""
    if cal.abstain:
        return f"calibration: the head abstains (gives no evidence, threshold {cal.threshold}): {cal.reason}"
    return f"calibration: target precision {cal.target_precision}: {cal.reason}"


def split_rows(rows: Sequence[int] | torch.Tensor, targets: torch.Tensor, fraction: float,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of ``rows`` (into ``targets``): (calibration rows, measurement rows)."""
    rows = torch.as_tensor(rows)
    group = torch.where(targets[rows].sum(1) > 0, targets[rows].argmax(1), -1)
    gen = torch.Generator().manual_seed(seed + 1)
    first, second = [], []
    for g in group.unique().tolist():
        members = rows[group == g]
        members = members[torch.randperm(len(members), generator=gen)]
        cut = int(round(fraction * len(members)))
        first.append(members[:cut])
        second.append(members[cut:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values
