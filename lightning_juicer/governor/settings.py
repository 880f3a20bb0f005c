"""The governor's settings as the configuration gives them: which frozen model, its weights, its class head.

One type for every user of a governor: ``GovernorConfig(name, pretrained)`` (on-the-fly scoring,
evaluation), extended by ``GovernorSettings(..., head)`` for the passes. The passes read it from ``governor:`` in their YAML
(``--governor.name x``, ``--governor.head.kind file``); jsonargparse checks the types and choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HeadKind = Literal["auto", "model", "file", "zero_shot", "none"]


@dataclass
class HeadSettings:
    """Class-evidence head Γ_pred.

    Args:
        kind: ``auto`` (the governor's own head if it has one, else none), ``model``, ``file`` (a linear
            head file at ``path``), ``zero_shot`` (open_clip governors) or ``none``.
        path: kind=file: a linear head state dict ([C, D] weight + bias on the CLS embedding).
        classnames: a list or a text file (one name per line); null: the recorded labels, else ImageNet-1k.
        activation: null: the one the governor folder / head file records (refused if it records none);
            ``softmax`` accepts closed-set evidence knowingly.
    """

    kind: HeadKind = "auto"
    path: str | None = None
    classnames: list[str] | str | None = None
    activation: Literal["sigmoid", "softmax"] | None = None


@dataclass
class GovernorConfig:
    """Which frozen governor (on-the-fly scoring, evaluation, and the base of a pass's ``GovernorSettings``).

    Args:
        name: timm name[.tag], ``open_clip:<model>``, ``juicer-synthetic`` or a local folder.
        pretrained: true: its weights from the local cache (never downloads); or a weights file.
    """

    name: str = "juicer-synthetic"
    pretrained: bool | str = True


@dataclass
class GovernorSettings(GovernorConfig):
    """The frozen governor of a pass: which model, and its class-evidence head.

    Args:
        name: timm name[.tag], ``open_clip:<model>``, ``juicer-synthetic`` or a local folder.
        pretrained: true: its weights from the local cache (never downloads); or a weights file.
        head: its class-evidence head.
    """

    head: HeadSettings = field(default_factory=HeadSettings)
