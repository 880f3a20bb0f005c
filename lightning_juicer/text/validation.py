"""Validating every rewritten caption: chatter stripped, bad outputs rejected with a reason (the original is kept).

**Cleaned** (then checked): a preamble ("Sure! Here is the repaired caption:", "The caption is ..."),
quotes and markdown emphasis around the caption, a list bullet, fence tags, and every line but the
caption line (the first line that is not chatter; explanations after it are dropped).

**Rejected**, with the first reason that applies (``REJECT_REASONS``, in this order):

* ``empty``: nothing left after cleaning;
* ``refusal``: the model declined or talked about itself;
* ``prompt_echo``: the output repeats the prompt (four words in a row of P_M / P_O that the original
  does not have, or an evidence confidence such as "(0.87)");
* ``too_long``: longer than ``max_length_ratio`` x the original's characters + ``length_allowance``;
* ``new_url``: a URL, domain, e-mail address or @handle the original does not have;
* ``spam``: an advertising word (``spam_words``) the original does not have;
* ``invented_object``: a class of the evidence head's vocabulary named in the output that is neither in
  the evidence nor named in the original;
* ``invented_attribute``: a colour word the original and the evidence do not have;
* ``lost_object``: a class of the vocabulary that the original names (even misspelt) is gone;
* ``lost_content``: fewer than ``min_kept`` of the original's content words kept (and at least
  ``min_kept_words`` when it has that many): a caption rewritten into something else;
* ``invented_words``: more than ``max_new_words`` content words that are neither in the original
  (as written, inflected or respelled one edit away) nor in the evidence class names.

An input is not sent (``INPUT_REASONS``) when it is empty, too long, or carries instructions addressed
to the model (``input_injection``: "ignore the previous instructions", "reply only with ..."), so that
no rewrite obeying them can exist; the original caption is kept for those.
"""

from __future__ import annotations

import functools

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lightning_juicer.text.rules import DEFAULT_JUNK_PHRASES, Vocabulary, drop_junk, normalise, words

REJECT_REASONS = ("empty", "refusal", "prompt_echo", "too_long", "new_url", "spam", "invented_object",
                  "invented_attribute", "lost_object", "lost_content", "invented_words", "backend_error")
INPUT_REASONS = ("empty_input", "input_too_long", "input_injection")

_CHATTER = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course|absolutely|great|alright)\b[^:\n]*?(?:[:!.]|$)\s*)?"
    r"(?:(?:here\s+is|here's|this\s+is|below\s+is|i\s+have)\b[^:\n]*?(?::|$)\s*)?"
    r"(?:(?:the\s+)?\**\s*(?:repaired|rewritten|revised|corrected|improved|new|final|updated|fixed|juiced)?\s*"
    r"caption\s*\**\s*(?::|\bis\b\s*:?|\breads\b\s*:?|=)\s*)?",
    re.IGNORECASE,
)
_TAG = re.compile(r"</?[a-z][a-z0-9]*\s*/?>", re.IGNORECASE)  # simple markup such as <b>...</b>
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")
_WRAP = "\"'`“”‘’«»*_ "
_FENCE = re.compile(r"<\s*/?\s*caption\b(?:[^<>]{0,40}>)?", re.IGNORECASE)
_URL = re.compile(
    r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.]+|(?<![\w@])@\w{2,}"
    r"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:[a-z]{2,3}|example|info|shop|store|online|site|xyz|club|top)\b",
    re.IGNORECASE,
)
_CONFIDENCE = re.compile(r"\(\s*(?:0?\.\d+|1\.0+|\d{1,3}\s*%)\s*\)")
STOPWORDS = frozenset(
    "a an the of in on at to for from with and or but is are was were be been being this that these those it "
    "its there here by as into onto over under next beside near photo image picture shot view some two three "
    "one his her their our your my while who which what where has have having very just also out up down off "
    "than then against between behind above below around through during front side".split()
)
DEFAULT_REFUSALS = (
    r"\bi(?:'m| am)? (?:sorry|unable|not able)\b",
    r"\bi (?:can(?:no|')t|cannot|won't|will not)\b",
    r"\bas an ai\b",
    r"\blanguage model\b",
    r"\bignore (?:all |the |any )?(?:previous|prior|above) instructions\b",
)
DEFAULT_INJECTIONS = (
    r"\b(?:ignore|disregard|forget|override|bypass)\b.{0,40}\b(?:instructions?|prompts?|rules?|guidelines|"
    r"previous|above|prior|system)\b",
    r"\b(?:system prompt|new instructions?|you are now|from now on|act as (?:a|an)|pretend (?:to be|you))\b",
    r"\b(?:respond|reply|answer|output|print|say|write|return)\b[^.]{0,20}\b(?:only|just|exactly|the word)\b",
    r"\b(?:assistant|system|user)\s*:",
)
DEFAULT_SPAM = ("cheap", "pills", "viagra", "casino", "discount", "coupon", "promo", "buy", "order now", "sale",
                "free shipping", "click", "subscribe", "visit", "deal", "deals", "bitcoin", "crypto", "win",
                "winner", "prize", "loan", "sex", "xxx", "porn", "dating", "followers", "offer")
COLOURS = frozenset(
    "red blue green yellow orange purple pink brown black white grey gray golden silver beige violet "
    "turquoise cyan magenta teal maroon navy crimson scarlet".split()
)


@dataclass
class ValidationConfig:
    """Limits on accepted outputs (see the module docstring for what each reason means)."""

    max_length_ratio: float = 3.0
    length_allowance: int = 40
    max_input_chars: int = 2000
    min_kept: float = 0.5
    min_kept_words: int = 2
    max_new_words: int = 2
    refusal_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSALS))
    injection_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_INJECTIONS))
    spam_words: list[str] = field(default_factory=lambda: list(DEFAULT_SPAM))
    classnames: list[str] | None = None  # the evidence head's classes; null: from the vision sidecars


def _chatter_only(line: str) -> bool:
    return bool(re.fullmatch(r"[\W_]*", _CHATTER.sub("", line, count=1)))


def clean_output(text: str) -> str:
    """The caption inside an LLM answer: the first non-chatter line, without preamble, bullet, fences and quotes."""
    text = _FENCE.sub("\n", text)
    for line in (line.strip() for line in text.splitlines()):
        if not line or _chatter_only(line):
            continue
        stripped = _TAG.sub(" ", line)
        while True:  # 'The caption is: "The caption is: ..."' loses both preambles
            new = _BULLET.sub("", _CHATTER.sub("", stripped, count=1)).strip(_WRAP)
            if new == stripped:
                break
            stripped = new
        if stripped:
            return normalise(stripped)
    return ""


def stem(word: str) -> str:
    """A crude English stem (plural, -ing, -ed, -ly), enough to see an inflected original word."""
    for suffix, repl in (("'s", ""), ("ies", "y"), ("sses", "ss"), ("es", ""), ("s", ""), ("ing", ""), ("ed", ""),
                         ("ly", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + repl
    return word


def content_words(text: str) -> set[str]:
    """Lower-case words of 3+ letters that are not stop words."""
    return {w for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


def _covered(word: str, known: set[str], known_stems: set[str]) -> bool:
    """Whether a word is one of the known words: as written, inflected, or one edit away (a spelling fix)."""
    if word in known or stem(word) in known_stems:
        return True
    return len(word) >= 3 and bool(Vocabulary.edits(word) & known)


def class_names(name: str) -> list[list[str]]:
    """The word stems of each synonym of a class name, also written as one word
    ('T-shirt/top' -> [['t', 'shirt'], ['tshirt'], ['top']])."""
    out = []
    for part in re.split(r"[/,;|]", name):
        tokens = words(part)
        if tokens:
            out.append([stem(w) for w in tokens])
            if len(tokens) > 1:
                out.append([stem("".join(tokens))])
    return out


def mention_spans(text_stems: Sequence[str], name: str) -> list[tuple[int, int]]:
    """Word spans where one of a class name's synonyms occurs (any inflection) in the stemmed text."""
    spans = []
    for target in class_names(name):
        n = len(target)
        spans += [(i, i + n) for i in range(len(text_stems) - n + 1) if list(text_stems[i : i + n]) == target]
    return spans


def mentioned(text_stems: Sequence[str], name: str) -> bool:
    """Whether one of a class name's synonyms occurs as whole words (any inflection) in the stemmed text."""
    return bool(mention_spans(text_stems, name))


@functools.lru_cache(maxsize=4096)
def _one_edit_away(target: str) -> frozenset[str]:
    """Every string one Damerau edit away from a class-name word (a few dozen targets, thousands of captions)."""
    return frozenset(Vocabulary.edits(target))


def _misspelt(text_stems: Sequence[str], name: str, exact: set[str] = frozenset()) -> bool:
    """Whether the text names the class with a typo: each word as written or, from 4 letters, one edit away
    (a word in ``exact``, the exact name of some class, is that class and no typo: 'tshirt' is not 'shirt')."""
    def same(word: str, target: str) -> bool:
        return word == target or (len(target) >= 4 and word not in exact and word in _one_edit_away(target))

    for target in class_names(name):
        n = len(target)
        if any(all(same(w, t) for w, t in zip(text_stems[i : i + n], target)) for i in range(len(text_stems) - n + 1)):
            return True
    return False


def lost_classes(original: str, caption: str, classnames: Iterable[str]) -> list[str]:
    """Classes the original names (as written or misspelt) that the caption does not name."""
    classnames = list(classnames)
    exact = {w for c in classnames for target in class_names(c) if len(target) == 1 for w in target}
    out_stems, orig_stems = _stems(caption), _stems(original)
    return sorted(c for c in classnames if (mentioned(orig_stems, c) or _misspelt(orig_stems, c, exact))
                  and not mentioned(out_stems, c) and not _misspelt(out_stems, c, exact))


def invented_classes(original: str, caption: str, evidence: Sequence[str], classnames: Iterable[str]) -> list[str]:
    """Classes named in the caption that are neither evidence nor named in the original.

    A mention inside a longer allowed one does not count ('shirt' inside an allowed 't-shirt').
    """
    out_stems, orig_stems = _stems(caption), _stems(original)
    classnames = list(classnames)
    exact = {w for c in classnames for target in class_names(c) if len(target) == 1 for w in target}
    allowed = [c for c in classnames if c in evidence or mentioned(orig_stems, c) or _misspelt(orig_stems, c, exact)]
    covered = [span for c in allowed for span in mention_spans(out_stems, c)]
    invented = []
    for name in set(classnames) - set(allowed):
        for a, b in mention_spans(out_stems, name):
            if not any(x <= a and b <= y and (x, y) != (a, b) for x, y in covered):
                invented.append(name)
                break
    return sorted(invented)


def _stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class Validator:
    """Checks one (original, output) pair; returns the caption to store and the rejection reason or None."""

    def __init__(self, cfg: ValidationConfig, prompt_texts: Iterable[str] = ()) -> None:
        self.cfg = cfg
        self.refusals = [re.compile(p, re.IGNORECASE) for p in cfg.refusal_patterns]
        self.injections = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in cfg.injection_patterns]
        self.spam = [re.compile(rf"(?<!\w){re.escape(w)}(?!\w)", re.IGNORECASE) for w in cfg.spam_words]
        prompt_words = [words(re.sub(r"\{[^}]*\}", " ", t)) for t in prompt_texts]
        self.prompt_grams = set().union(set(), *(_ngrams(w, 4) for w in prompt_words))

    def check_input(self, caption: str) -> str | None:
        """The reason an input caption is not sent to the backend, or None."""
        if not normalise(caption):
            return "empty_input"
        if len(caption) > self.cfg.max_input_chars:
            return "input_too_long"
        if any(p.search(caption) for p in self.injections):
            return "input_injection"
        return None

    def __call__(self, original: str, output: str, evidence: Sequence[str] = (),
                 classnames: Iterable[str] | None = None) -> tuple[str, str | None]:
        """``(caption, None)`` for an accepted output, ``(original, reason)`` for a rejected one.

        ``evidence``: the evidence class names given to the model; ``classnames``: the evidence head's
        vocabulary (``cfg.classnames`` when set, else these; no invented-object check without either).
        """
        caption = clean_output(output)
        reason = self.reason(original, caption, evidence,
                             self.cfg.classnames if self.cfg.classnames is not None else classnames)
        return (original, reason) if reason else (caption, None)

    def reason(self, original: str, caption: str, evidence: Sequence[str],
               classnames: Iterable[str] | None) -> str | None:
        """Why a cleaned output is rejected, or None (see the module docstring for the order)."""
        if not caption:
            return "empty"
        if any(p.search(caption) for p in self.refusals):
            return "refusal"
        out_words, orig_words = words(caption), words(original)
        if (_ngrams(out_words, 4) - _ngrams(orig_words, 4)) & self.prompt_grams or (
                _CONFIDENCE.search(caption) and not _CONFIDENCE.search(original)):
            return "prompt_echo"
        if len(caption) > self.cfg.max_length_ratio * len(original) + self.cfg.length_allowance:
            return "too_long"
        low = original.lower()
        if any(m.group(0).lower() not in low for m in _URL.finditer(caption)):
            return "new_url"
        if any(p.search(caption) and not p.search(original) for p in self.spam):
            return "spam"
        if classnames is not None and invented_classes(original, caption, evidence, classnames):
            return "invented_object"
        if classnames is not None and lost_classes(original, caption, classnames):
            return "lost_object"
        evidence_words = {w for name in evidence for w in words(name)}
        known = set(orig_words) | evidence_words
        known_stems = {stem(w) for w in known}
        if any(w in COLOURS and not _covered(w, known, known_stems) for w in out_words):
            return "invented_attribute"
        kept_from = content_words(drop_junk(original, [*self.cfg.spam_words, *DEFAULT_JUNK_PHRASES]))
        output_words = content_words(caption)
        output_stems = {stem(w) for w in output_words}
        kept = sum(_covered(w, output_words, output_stems) for w in kept_from)
        needed = max(min(self.cfg.min_kept_words, len(kept_from)), math.ceil(self.cfg.min_kept * len(kept_from)))
        if kept < needed:
            return "lost_content"
        new = [w for w in output_words if not _covered(w, known, known_stems)]
        if len(new) > self.cfg.max_new_words:
            return "invented_words"
        return None


def evidence_woven(original: str, caption: str, evidence: Sequence[str]) -> list[str]:
    """The evidence classes an accepted caption names that the original did not."""
    out_stems, orig_stems = _stems(caption), _stems(original)
    return [c for c in evidence if mentioned(out_stems, c) and not mentioned(orig_stems, c)]
