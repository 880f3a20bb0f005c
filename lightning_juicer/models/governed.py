"""The frozen governor as a part of the LightningModule: Lightning places and casts it, nothing trains or saves it.

The DataModule only describes the on-the-fly selection it wants (``data.spec.OnTheFlySelection``); the
LightningModule builds the governor from that description in ``setup`` and registers it as a frozen
submodule, so the trainer moves it to the device with the model and the trainer's precision applies
when the training step runs it (autocast for ``*-mixed``, a cast for ``*-true``). It is kept out of
the optimizer (no parameter requires grad; the optimizer takes ``module.model``'s parameters only) and
out of checkpoints (``exclude_from_state_dict``): it is configuration, reloaded from
``data.init_args.governor``, and checkpoints written before it moved here load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_juicer.data.spec import DataSpec, OnTheFlySelection
from lightning_juicer.errors import ConfigError, rekeyed
from lightning_juicer.governor.loading import load_governor
from lightning_juicer.governor.online import OnlineSelector


class FrozenGovernor(nn.Module):
    """The on-the-fly selector, frozen: no parameter requires grad and it stays in eval mode whatever ``train()`` says.

    ``forward(images)`` returns the selector's ``(keep [B, k] | None, fallbacks)``.
    """

    def __init__(self, selector: nn.Module) -> None:
        super().__init__()
        self.selector = selector  # an nn.Module becomes a child: placed and cast with the LightningModule
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenGovernor:
        """Always eval (Lightning switches the whole module to train mode for fitting)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor):
        return self.selector(images)


def build_governor(selection: OnTheFlySelection, spec: DataSpec) -> FrozenGovernor:
    """The frozen governor for ``selection`` on the student's grid; an unknown governor names ``data.init_args.governor``."""
    try:
        scorer = load_governor(selection.governor.name, selection.governor.pretrained)
    except ConfigError as e:
        raise rekeyed(e, "governor.", "data.init_args.governor.") from e
    selector = OnlineSelector(scorer, selection.strategy, selection.keep_ratio, spec.grid, spec.mean, spec.std)
    return FrozenGovernor(selector)


def exclude_from_state_dict(module: nn.Module, child: str) -> None:
    """Keep ``module.<child>`` out of ``module``'s state dict, and let loads without its keys be strict.

    Uses torch's public state-dict hooks; the prefix handed to the hook makes it work under wrappers (DDP).
    """

    def drop_keys(_module: nn.Module, state_dict: dict, prefix: str, _metadata) -> None:
        for key in [k for k in state_dict if k.startswith(f"{prefix}{child}.")]:
            del state_dict[key]

    def allow_missing(_module: nn.Module, incompatible) -> None:
        part = f"{child}."
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                        if not (k.startswith(part) or f".{part}" in k)]

    module.register_state_dict_post_hook(drop_keys)
    module.register_load_state_dict_post_hook(allow_missing)
