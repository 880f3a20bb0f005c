"""Data governance: which image patches to keep (selection) and, later, how they are scored."""

from lightning_juicer.governor.selection import STRATEGIES, keep_count, select_patches

__all__ = ["STRATEGIES", "keep_count", "select_patches"]
