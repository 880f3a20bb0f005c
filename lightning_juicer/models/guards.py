"""Non-finite loss guard without a host-device sync per step: skip on the device, check every N steps.

Each training step records, on the device, whether its loss is finite. Before the optimizer step the
guard also looks at the gradients (after DDP's all-reduce, so a NaN on any rank reaches every rank's
gradients and all ranks decide alike with no extra collective) and hands the fused AdamW a
``found_inf`` flag: a bad step is skipped inside the optimizer kernel (weights, moments and step count
untouched), the way ``torch.amp.GradScaler`` skips overflowing steps. Nothing is read on the host until
a check, every ``check_every`` steps and at the end of training / before a checkpoint: one sync for N
steps. Then ``raise`` stops the run naming the first bad step, its loss and the batch's sample keys, and
``skip`` logs the skipped steps and counts their samples as ``nonfinite_loss`` drops (in the ledger the
module hands it).

Trade-off: ``raise`` stops up to N - 1 steps after the bad one (the bad step and any later bad one were
skipped, so the weights stay finite); a step whose loss is finite but whose gradients are not is skipped
too (reported as non-finite gradients). An optimizer without ``found_inf`` support (not fused) falls back
to the host check of every step, as before.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import lightning as L
import torch

from lightning_juicer.data.drops import DropLedger

NONFINITE_POLICIES = ("raise", "skip")
SHOWN_KEYS = 32

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite."""


class _Step(NamedTuple):
    step: int
    rank: int
    keys: list[str]
    size: int
    loss: torch.Tensor  # detached, on the device
    skipped: torch.Tensor | None  # the found_inf decision (device bool), None until the optimizer step


def fused_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips a step on the device when given ``found_inf`` (fused Adam / AdamW / SGD)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)) and bool(
        optimizer.defaults.get("fused"))


class LossGuard:
    """Per-run state of the guard (held by the LightningModule, counting into the module's drop ledger)."""

    def __init__(self, policy: str, check_every: int = 100, drops: DropLedger | None = None) -> None:
        self.policy = policy
        self.drops = DropLedger() if drops is None else drops
        self.check_every = max(1, int(check_every))
        self.pending: list[_Step] = []
        self.bad_loss: torch.Tensor | None = None  # OR over the micro-batches of the current optimizer step

    def record(self, module: L.LightningModule, loss: torch.Tensor, batch: dict) -> torch.Tensor | None:
        """Note the step's loss; returns the loss to back-propagate (None: skip, host-checked fallback only)."""
        trainer = module.trainer
        bad = ~torch.isfinite(loss.detach())
        self.bad_loss = bad if self.bad_loss is None else self.bad_loss | bad
        keys = list(batch.get("key") or [])
        size = len(keys) or int(batch["image"].shape[0])
        self.pending.append(_Step(trainer.global_step, trainer.global_rank, keys, size, loss.detach().float(), None))
        optimizers = trainer.optimizers if trainer is not None else []
        if optimizers and not all(fused_skip(o) for o in optimizers):
            return None if self.check(module) else loss  # no device-side skip: the old per-step host check
        return loss

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Give the fused optimizer the skip decision: non-finite loss here or non-finite gradients anywhere."""
        if not fused_skip(optimizer) or self.bad_loss is None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = self.bad_loss
        if grads:
            bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        optimizer.found_inf = bad.float().reshape(())
        self.bad_loss = None
        self.pending = [s if s.skipped is not None else s._replace(skipped=bad) for s in self.pending]

    def due(self) -> bool:
        """True every ``check_every`` recorded steps."""
        return len(self.pending) >= self.check_every

    def check(self, module: L.LightningModule) -> bool:
        """Read the recorded steps on the host (one sync); raise / log and count. True if the last step was bad."""
        if not self.pending:
            return False
        steps, self.pending = self.pending, []
        losses = torch.stack([s.loss for s in steps])
        skipped = torch.stack([s.skipped.to(losses.device) if s.skipped is not None else torch.zeros_like(losses[0], dtype=torch.bool)
                               for s in steps])
        table = torch.stack([losses, (~torch.isfinite(losses)).float(), skipped.float()]).cpu().tolist()  # the one sync
        last_bad = False
        for s, value, bad_loss, was_skipped in zip(steps, *table):
            if not (bad_loss or was_skipped):
                continue
            last_bad = s is steps[-1]
            self._report(module, s, value, bad_loss)
        return last_bad

    def _report(self, module: L.LightningModule, s: _Step, loss: float, bad_loss: bool) -> None:
        shown = ", ".join(s.keys[:SHOWN_KEYS]) + (f" ... ({len(s.keys) - SHOWN_KEYS} more)" if len(s.keys) > SHOWN_KEYS else "")
        what = "loss" if bad_loss else "gradients (or a non-finite loss on another rank)"
        where = f"at step {s.step} (rank {s.rank}, loss {loss}) on the batch with keys [{shown}]"
        if self.policy == "raise":
            log.error("non-finite %s at step %d, rank %d; all batch keys: %s", what, s.step, s.rank, s.keys)
            raise NonFiniteLossError(
                f"non-finite {what} {where}; set model.init_args.nonfinite_loss skip to skip such batches (counted)"
            )
        log.warning("skipped the batch: non-finite %s %s", what, where)
        self.drops["nonfinite_loss"] += s.size
