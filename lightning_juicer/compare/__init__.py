"""The paper's comparison (Tables 2 and 5) on any data: ``python -m lightning_juicer compare --config ...``.

``arms.py`` defines the rows (what each arm changes in the shared fit config), ``settings.py`` what the
command reads, ``run.py`` runs the passes, keep lists and fits as the project's own commands, and
``report.py`` writes the table and the plot; ``command.py`` is the entry point.
"""

from lightning_juicer.compare.arms import ARMS, DEFAULT_ARMS, Arm, steps_and_tokens
from lightning_juicer.compare.settings import CompareSettings

__all__ = ["ARMS", "DEFAULT_ARMS", "Arm", "CompareSettings", "steps_and_tokens"]
