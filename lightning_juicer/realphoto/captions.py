"""Captions of the real-photo benchmark: clean descriptions, web-style noise, and a detector of named classes.

A clean caption names every pasted item with one of its class's synonyms (``FASHION_CLASSES``) and,
with probability ``context_rate``, the photograph behind it ("a sneaker in front of a picture of a
cat"). Web noise, each kind drawn independently per caption at its own rate (``NoiseRates``):

* ``missing_object``: one item is not named: its phrase becomes a vague word ("this piece", "my
  latest find"), so the caption may describe only the context;
* ``wrong_object``: one named item is called by another class's synonym (a boot called a sandal);
* ``typo``: one or two words of four letters or more get a keyboard slip: a letter replaced by a
  neighbouring key, a vowel left out, or the space to the next word lost;
* ``stutter``: a word written twice or three times in a row;
* ``junk``: a shop or camera token before or after the caption (SKU numbers, "free shipping",
  picture counters, camera file names, tags);
* ``shouting``: the whole caption in capitals.

This noise was designed for this benchmark, independently of the synthetic set's (whose lists the
``rules`` text backend was tuned on). ``named_classes`` finds which classes a caption names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from lightning_juicer.realphoto.sources import FASHION_CLASSES, PHOTOS

NOISE_KINDS: tuple[str, ...] = ("missing_object", "wrong_object", "typo", "stutter", "junk", "shouting")

OBJECT_TEMPLATES: tuple[str, ...] = (
    "{objs}",
    "a photo of {objs}",
    "{objs} for sale",
    "check out {objs}",
    "close-up of {objs}",
    "{objs} on display",
    "product shot of {objs}",
)
CONTEXT_TEMPLATES: tuple[str, ...] = (
    "{objs} in front of a picture of {ctx}",
    "{objs} on a photo of {ctx}",
    "{objs} over a shot of {ctx}",
    "{objs} with {ctx} in the background",
    "a picture of {ctx} with {objs} pasted on it",
)
_JOINERS: tuple[str, ...] = (" and ", " with ", " next to ", " plus ")
_VAGUE: tuple[str, ...] = ("this piece", "my latest find", "something new", "this one", "an item")
_JUNK: tuple[str, ...] = (
    "free shipping", "ships worldwide", "NWT", "lot of 2", "size M", "in stock", "pic 2 of 5",
    "#ootd", "#streetstyle", "#vintage", "via tumblr", "(c) 2014", "*** SOLD ***", "wholesale",
)
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a product photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
)


@dataclass(frozen=True)
class NoiseRates:
    """Per-caption probability of each noise kind (see the module docs)."""

    missing_object: float = 0.1
    wrong_object: float = 0.1
    typo: float = 0.25
    stutter: float = 0.15
    junk: float = 0.3
    shouting: float = 0.05


@dataclass
class Caption:
    """A caption and what it says: the classes it names (by construction), the wrong class if any, context."""

    text: str
    clean: str
    named: list[int]
    wrong: int | None
    context: bool
    noise: list[str]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return _pick(rng, _JOINERS).join(phrases)


def _compose(phrases: list[str], context: str | None, rng: np.random.Generator) -> str:
    objs = _join(phrases, rng)
    if context is None:
        return _pick(rng, OBJECT_TEMPLATES).format(objs=objs)
    return _pick(rng, CONTEXT_TEMPLATES).format(objs=objs, ctx=context)


def clean_caption(labels: Sequence[int], photo: str, rng: np.random.Generator, context_rate: float) -> str:
    """A clean caption naming every item (one synonym each) and, at context_rate, the photograph behind."""
    phrases = [_pick(rng, FASHION_CLASSES[c].synonyms) for c in labels]
    context = _pick(rng, _photo(photo).phrases) if rng.random() < context_rate else None
    return _compose(phrases, context, rng)


def _photo(name: str):
    return next(p for p in PHOTOS if p.name == name)


def _keyboard_slip(word: str, rng: np.random.Generator) -> str:
    """Replace one letter by a neighbouring key on its QWERTY row, or leave out one vowel."""
    vowels = [i for i, ch in enumerate(word) if ch in "aeiou" and 0 < i < len(word) - 1]
    if vowels and rng.random() < 0.4:
        i = vowels[int(rng.integers(len(vowels)))]
        return word[:i] + word[i + 1:]
    letters = [i for i, ch in enumerate(word) if ch.lower() in "".join(_KEY_ROWS)]
    i = letters[int(rng.integers(len(letters)))]
    row = next(r for r in _KEY_ROWS if word[i].lower() in r)
    j = row.index(word[i].lower())
    neighbours = [row[k] for k in (j - 1, j + 1) if 0 <= k < len(row)]
    return word[:i] + _pick(rng, neighbours) + word[i + 1:]


def _typos(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    for i in rng.choice(candidates, size=min(len(candidates), int(rng.integers(1, 3))), replace=False):
        i = int(i)
        if not words[i]:  # merged into the word before it
            continue
        if rng.random() < 0.25 and i + 1 < len(words):
            words[i] = words[i] + words[i + 1]
            words[i + 1] = ""
        else:
            words[i] = _keyboard_slip(words[i], rng)
    return " ".join(w for w in words if w)


def _stutter(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    i = int(rng.integers(len(words)))
    words[i:i + 1] = [words[i]] * int(rng.integers(2, 4))
    return " ".join(words)


def noisy_caption(labels: Sequence[int], photo: str, rng: np.random.Generator, context_rate: float,
                  rates: NoiseRates) -> Caption:
    """A web-style caption for items of the given classes on a photograph (see the module docs)."""
    draws = {kind: rng.random() < getattr(rates, kind) for kind in NOISE_KINDS}
    phrases = [_pick(rng, FASHION_CLASSES[c].synonyms) for c in labels]
    context = _pick(rng, _photo(photo).phrases) if rng.random() < context_rate else None
    clean = _compose(phrases, context, np.random.default_rng(int(rng.integers(2**32))))
    named, noise, wrong = list(labels), [], None
    if draws["missing_object"]:
        i = int(rng.integers(len(phrases)))
        phrases[i] = _pick(rng, _VAGUE)
        named.pop(i)
        noise.append("missing_object")
    if draws["wrong_object"] and named:
        i = next(k for k, c in enumerate(labels) if c in named and phrases[k] not in _VAGUE)
        others = [c for c in range(len(FASHION_CLASSES)) if c not in labels]
        wrong = int(others[int(rng.integers(len(others)))])
        phrases[i] = _pick(rng, FASHION_CLASSES[wrong].synonyms)
        named.remove(labels[i])
        noise.append("wrong_object")
    text = _compose(phrases, context, np.random.default_rng(int(rng.integers(2**32))))
    if draws["typo"]:
        text, before = _typos(text, rng), text
        if text != before:
            noise.append("typo")
    if draws["stutter"]:
        text = _stutter(text, rng)
        noise.append("stutter")
    if draws["junk"]:
        token = _pick(rng, _JUNK)
        text = f"{token} {text}" if rng.random() < 0.5 else f"{text} {token}"
        noise.append("junk")
    if draws["shouting"]:
        text = text.upper()
        noise.append("shouting")
    return Caption(text, clean, named, wrong, context is not None, noise)


def distinct_clean_captions(labels: Sequence[int], photo: str, rng: np.random.Generator, n: int = 5,
                            context_rate: float = 0.5) -> list[str]:
    """n clean captions (distinct where possible) for a retrieval image."""
    caps: list[str] = []
    for _ in range(20 * n):
        cap = clean_caption(labels, photo, rng, context_rate)
        if cap not in caps:
            caps.append(cap)
        if len(caps) == n:
            break
    while len(caps) < n:
        caps.append(clean_caption(labels, photo, rng, context_rate))
    return caps


@lru_cache(maxsize=1)
def _synonym_pattern() -> tuple[re.Pattern, dict[str, int]]:
    """One regex over every class synonym (longest first, article optional) and the synonym -> class map."""
    lookup: dict[str, int] = {}
    for c, cls in enumerate(FASHION_CLASSES):
        for phrase in cls.synonyms:
            lookup[re.sub(r"^(a pair of|an?) ", "", phrase)] = c
    words = sorted(lookup, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])", re.IGNORECASE), lookup


def named_classes(text: str) -> set[int]:
    """Classes a caption names by one of their synonyms (whole words, case-insensitive, longest match wins)."""
    pattern, lookup = _synonym_pattern()
    return {lookup[m.group(1).lower()] for m in pattern.finditer(text)}


def names_context(text: str, photo: str) -> bool:
    """True when a caption names the photograph (one of its phrases, case-insensitive)."""
    lowered = text.lower()
    return any(p in lowered for p in _photo(photo).phrases)
