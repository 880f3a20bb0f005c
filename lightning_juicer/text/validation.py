"""Validating every rewritten caption: chatter stripped, bad outputs rejected with a reason (the original is kept)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lightning_juicer.text.rules import Vocabulary, drop_junk, normalise, words

# Reasons an output is rejected (the sample keeps its original caption) or an input is not sent.
REJECT_REASONS = ("empty", "too_long", "refusal", "lost_content", "backend_error")
INPUT_REASONS = ("empty_input", "input_too_long")

_PREFIX = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely)\b[^:\n]*?(?:[:!.]|$)\s*)?"
    r"(?:(?:here\s+is|here's|this\s+is)\b[^:\n]*?:\s*)?"
    r"(?:\**\s*(?:repaired|rewritten|revised|corrected|improved|new|final|updated)?\s*caption\s*\**\s*:\s*)?",
    re.IGNORECASE,
)
_WRAP = "\"'`“”‘’*_ "
_FENCE = re.compile(r"</?\s*caption\s*>", re.IGNORECASE)
STOPWORDS = frozenset(
    "a an the of in on at to for from with and or but is are was were be been this that these those it its "
    "there here by as into over under next beside near photo image picture".split()
)
DEFAULT_REFUSALS = (
    r"\bi(?:'m| am)? (?:sorry|unable|not able)\b",
    r"\bi (?:can(?:no|')t|cannot|won't|will not)\b",
    r"\bas an ai\b",
    r"\blanguage model\b",
    r"\bignore (?:all |the )?previous instructions\b",
)


@dataclass
class ValidationConfig:
    """Limits on accepted outputs: ``max_length_ratio`` x the original's characters + ``length_allowance``."""

    max_length_ratio: float = 3.0
    length_allowance: int = 40
    max_input_chars: int = 2000
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))


def clean_output(text: str) -> str:
    """The caption inside an LLM answer: first non-chatter line, without prefixes, fences and quotes."""
    text = _FENCE.sub("\n", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        stripped = _PREFIX.sub("", line, count=1).strip(_WRAP)
        if stripped:
            return normalise(stripped)
    return ""


def content_words(text: str) -> set[str]:
    """Lower-case words of 3+ letters that are not stop words (the original's are taken with its junk removed)."""
    return {w for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


def _kept(original: set[str], output: set[str]) -> bool:
    """Some content word of the original survives (exactly, or one edit away: the output may fix its spelling)."""
    if not original or original & output:
        return True
    return any(Vocabulary.edits(w) & output for w in original)


class Validator:
    """Checks one (original, output) pair; returns the caption to store and the rejection reason or None."""

    def __init__(self, cfg: ValidationConfig) -> None:
        self.cfg = cfg
        self.refusals = [re.compile(p, re.IGNORECASE) for p in cfg.refusal_patterns]

    def check_input(self, caption: str) -> str | None:
        """The reason an input caption is not sent to the backend, or None."""
        if not normalise(caption):
            return "empty_input"
        if len(caption) > self.cfg.max_input_chars:
            return "input_too_long"
        return None

    def __call__(self, original: str, output: str) -> tuple[str, str | None]:
        """``(caption, None)`` for an accepted output, ``(original, reason)`` for a rejected one."""
        caption = clean_output(output)
        if not caption:
            return original, "empty"
        if any(p.search(caption) for p in self.refusals):
            return original, "refusal"
        if len(caption) > self.cfg.max_length_ratio * len(original) + self.cfg.length_allowance:
            return original, "too_long"
        if not _kept(content_words(drop_junk(original, ())), content_words(caption)):
            return original, "lost_content"
        return caption, None
