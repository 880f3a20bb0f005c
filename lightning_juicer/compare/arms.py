"""The arms of the comparison (paper Tables 2 and 5): what each one changes in the shared fit config.

An arm is data, not code: which samples it trains on (a sieve's keep list), which patches (a selection
strategy at the token fraction, scored by the governor on the fly or from the vision pass's sidecars),
which captions, and whether it ends with the full-patch tuning phase. Adding an arm is one ``Arm(...)``
entry in ``ARMS`` (for example a new selection strategy: ``selection="my_strategy"``).

Budget (``budget: tokens``, the paper's design): every compressed arm gets ``fraction`` of Full's image
tokens. A sample-level arm trains ``fraction`` of the steps on whole images (the same epochs over its
kept share), a token-level arm all the steps on ``fraction`` of each image's patches, and the full-patch
variant fewer steps so that its final whole-image steps are paid for (see ``steps_and_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

COMBO = "combo"  # Arm.sieve: the comparison's ``combo_sieve`` (DataJuicer × Sieve)


@dataclass(frozen=True)
class Arm:
    """One row of the comparison table."""

    title: str
    level: str  # "—" (Full), "sample", "token", "token × sample"
    sieve: str | None = None  # a registered sieve whose keep list the arm trains on (COMBO: ``combo_sieve``)
    selection: str | None = None  # token-level patch selection at ``fraction`` (None: whole images)
    scores: str | None = None  # where the selection's scores come from: "sidecar" | "on_the_fly" | None (not needed)
    captions: str = "original"  # "original" | "juiced" (the text pass's captions)
    full_patch: bool = False  # end with the full-patch tuning phase (paper Tab. 5f)

    @property
    def juiced(self) -> bool:
        """Whether the arm needs the vision pass's sidecars (scores or captions)."""
        return self.scores == "sidecar" or self.captions != "original"


ARMS: dict[str, Arm] = {
    "full": Arm("Full data", "—"),
    "random": Arm("Random", "sample", sieve="random"),
    "cluster": Arm("Cluster", "sample", sieve="cluster"),
    "clip_score": Arm("CLIP-Score", "sample", sieve="clip_score"),
    "semdedup": Arm("SemDeDup", "sample", sieve="semdedup"),
    "d4": Arm("D4", "sample", sieve="d4"),
    "neg_clip_loss": Arm("negCLIPLoss", "sample", sieve="neg_clip_loss"),
    "d2": Arm("D2 Pruning", "sample", sieve="d2"),
    "random_star": Arm("Random*", "token", selection="random"),
    "cluster_star": Arm("Cluster*", "token", selection="cluster", scores="on_the_fly"),
    "datajuicer": Arm("DataJuicer", "token", selection="topk", scores="sidecar", captions="juiced"),
    "datajuicer_original": Arm("DataJuicer, original captions", "token", selection="topk", scores="sidecar"),
    "datajuicer_full_patch": Arm("DataJuicer + full-patch tuning", "token", selection="topk", scores="sidecar",
                                 captions="juiced", full_patch=True),
    "datajuicer_mix": Arm("DataJuicer, mix selection", "token", selection="mix", scores="sidecar", captions="juiced"),
    "datajuicer_context": Arm("DataJuicer, top-k + context", "token", selection="topk_context", scores="sidecar",
                              captions="juiced"),
    "datajuicer_sieve": Arm("DataJuicer × Sieve", "token × sample", sieve=COMBO, selection="topk", scores="sidecar",
                            captions="juiced"),
}

# The arms the issue asks for, in table order (``cluster``, ``neg_clip_loss`` and ``d2`` run when named).
DEFAULT_ARMS = ("full", "random", "clip_score", "semdedup", "d4", "random_star", "cluster_star", "datajuicer",
                "datajuicer_original", "datajuicer_full_patch", "datajuicer_sieve", "datajuicer_mix",
                "datajuicer_context")


def steps_and_tokens(arm: Arm, steps: int, fraction: float, budget: str, full_patch_fraction: float) -> tuple[int, float]:
    """The arm's optimizer steps and its image tokens as a fraction of Full's (``steps`` whole-image steps).

    ``budget="tokens"``: sample-level arms train ``fraction * steps``; the full-patch arm trains ``s`` steps with
    ``s * ((1 - f) * fraction + f) = fraction * steps`` (``f`` = ``full_patch_fraction``); the others ``steps``.
    ``budget="steps"``: every arm trains ``steps``.
    """
    ratio = fraction if arm.selection else 1.0
    per_step = (1 - full_patch_fraction) * ratio + full_patch_fraction if arm.full_patch else ratio
    own = steps
    if budget == "tokens":
        if arm.level == "sample":
            own = max(1, round(steps * fraction))
        elif arm.full_patch:
            own = max(1, round(steps * fraction / per_step))
    return own, own * per_step / steps
