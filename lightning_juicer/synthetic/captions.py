"""Captions: clean captions naming every object, web-style noise (unmentioned objects, wrong colours, typos,
repeats, junk tokens) and the Karpathy-style tokens of the retrieval set."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from lightning_juicer.synthetic.scenes import COLORS

BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "gradient": ("gradient", "smooth", "plain"),
    "stripes": ("striped", "stripy"),
    "checker": ("checkered", "tiled"),
    "noise": ("textured", "mottled", "blotchy"),
}


_TEMPLATES: tuple[str, ...] = (
    "{objs}",
    "a photo of {objs}",
    "photo of {objs}",
    "an image of {objs}",
    "a picture of {objs}",
    "a drawing of {objs}",
    "there is {objs}",
    "{objs} in the picture",
    "a close-up of {objs}",
)
_BG_TEMPLATES: tuple[str, ...] = (
    "{objs} on a {bg} background",
    "a photo of {objs} on a {bg} background",
    "photo of {objs} against a {bg} backdrop",
    "an image of {objs} over a {bg} background",
)
_PAIR_JOINERS: tuple[str, ...] = (" and ", " next to ", " with ", " beside ")
_TRIPLE_JOINERS: tuple[tuple[str, str], ...] = ((", ", " and "), (", ", ", and "), (" and ", " and "))
_CONNECTOR = r"(?:, and |, | and | next to | with | beside )"
_SIZE_WORDS = ("small", "tiny", "large", "big")

NOISE_TYPES: tuple[str, ...] = ("unmentioned", "wrong_color", "misspelling", "repeat", "junk")
_JUNK_FIXED: tuple[str, ...] = ("click here", "stock photo", "free download", "#sale", "best price", "#new")



def _article(word: str) -> str:
    """Indefinite article for a word."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _object_phrase(obj: dict, rng: np.random.Generator) -> str:
    """'a [size] colour shape' for one object."""
    words = [obj["color"], obj["shape"]]
    if rng.random() < 0.2:
        frac = float(np.asarray(obj["mask"]).mean()) if "mask" in obj else 0.1
        if frac < 0.06:
            words.insert(0, "small" if rng.random() < 0.7 else "tiny")
        elif frac > 0.15:
            words.insert(0, "large" if rng.random() < 0.6 else "big")
    return " ".join([_article(words[0])] + words)


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    """Join object phrases into natural English."""
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + _PAIR_JOINERS[int(rng.integers(len(_PAIR_JOINERS)))] + phrases[1]
    first, last = _TRIPLE_JOINERS[int(rng.integers(len(_TRIPLE_JOINERS)))]
    return first.join(phrases[:-1]) + last + phrases[-1]


def clean_caption(objects: Sequence[dict], rng: np.random.Generator, background: str | None = None) -> str:
    """Natural short caption mentioning every object's colour and shape (background sometimes)."""
    order = rng.permutation(len(objects))
    objs = _join([_object_phrase(objects[i], rng) for i in order], rng)
    if background in BACKGROUND_WORDS and rng.random() < 0.3:
        words = BACKGROUND_WORDS[background]
        bg = words[int(rng.integers(len(words)))]
        text = _BG_TEMPLATES[int(rng.integers(len(_BG_TEMPLATES)))].format(objs=objs, bg=bg)
    else:
        text = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(objs=objs)
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.25:
        text += "."
    return text


def _phrase_pattern(obj: dict) -> re.Pattern:
    """Regex matching an object's phrase: article, optional size word, colour, shape."""
    sizes = "|".join(_SIZE_WORDS)
    color, shape = re.escape(obj["color"]), re.escape(obj["shape"])
    return re.compile(rf"\b(?P<art>an?) (?P<size>(?:{sizes}) )?(?P<color>{color}) (?P<shape>{shape})\b", re.IGNORECASE)


def _drop_object(caption: str, obj: dict) -> str | None:
    """Remove one object's phrase (with its connector) from a caption; None if not found."""
    phrase = _phrase_pattern(obj).pattern
    for pat in (_CONNECTOR + phrase, phrase + _CONNECTOR):
        m = re.search(pat, caption, re.IGNORECASE)
        if m:
            out = caption[: m.start()] + caption[m.end():]
            if m.start() == 0 and caption[:1].isupper():
                out = out[:1].upper() + out[1:]
            return out
    return None


def _recolor(caption: str, obj: dict, new_color: str) -> str | None:
    """Replace one object's colour word by another colour; None if the phrase is not found."""
    m = _phrase_pattern(obj).search(caption)
    if m is None:
        return None
    nxt = m.group("size") or new_color
    art = _article(nxt)
    if m.group("art")[0].isupper():
        art = art.capitalize()
    new = f"{art} {m.group('size') or ''}{new_color} {m.group('shape')}"
    return caption[: m.start()] + new + caption[m.end():]


def _typo(word: str, rng: np.random.Generator) -> str:
    """Swap, drop or duplicate a letter so that the word always changes."""
    op = int(rng.integers(3))
    if op == 0:
        swaps = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if swaps:
            i = swaps[int(rng.integers(len(swaps)))]
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = int(rng.integers(len(word)))
    if op == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _misspell(caption: str, objects: Sequence[dict], rng: np.random.Generator) -> str:
    """Introduce typos into 1-2 words, preferring shape/colour words half of the time."""
    spans = [m.span() for m in re.finditer(r"[A-Za-z]{3,}", caption)]
    if not spans:
        return caption
    keywords = {o["shape"] for o in objects} | {o["color"] for o in objects} | set(COLORS)
    preferred = [s for s in spans if caption[s[0]:s[1]].lower() in keywords]
    pool = preferred if preferred and rng.random() < 0.5 else spans
    n = min(len(pool), int(rng.integers(1, 3)))
    chosen = sorted((pool[i] for i in rng.choice(len(pool), size=n, replace=False)), reverse=True)
    for a, b in chosen:
        caption = caption[:a] + _typo(caption[a:b], rng) + caption[b:]
    return caption


def _repeat(caption: str, rng: np.random.Generator) -> str:
    """Repeat one or two words ('a a red red star')."""
    words = caption.split(" ")
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(len(words)))
        words.insert(i, words[i])
    return " ".join(words)


def _junk_token(rng: np.random.Generator) -> str:
    """A junk web token: file name, URL or spam phrase."""
    n = int(rng.integers(100000))
    kind = int(rng.integers(4))
    if kind == 0:
        return f"IMG_{1000 + n % 9000}.JPG"
    if kind == 1:
        return f"DSC{n:05d}.jpg"
    if kind == 2:
        return f"http://www.example-shop.com/p/{n}"
    return _JUNK_FIXED[int(rng.integers(len(_JUNK_FIXED)))]


def add_caption_noise(
    caption: str, objects: Sequence[dict], rng: np.random.Generator, noise_rate: float
) -> tuple[str, list[str]]:
    """Apply each web-noise type independently with probability noise_rate; returns (caption, applied types)."""
    applied: list[str] = []
    mentioned = list(objects)
    draws = {name: rng.random() < noise_rate for name in NOISE_TYPES}
    if draws["unmentioned"] and len(mentioned) >= 2:
        i = int(rng.integers(len(mentioned)))
        out = _drop_object(caption, mentioned[i])
        if out is not None:
            caption = out
            mentioned.pop(i)
            applied.append("unmentioned")
    if draws["wrong_color"] and mentioned:
        obj = mentioned[int(rng.integers(len(mentioned)))]
        others = [c for c in COLORS if c != obj["color"]]
        out = _recolor(caption, obj, others[int(rng.integers(len(others)))])
        if out is not None:
            caption = out
            applied.append("wrong_color")
    if draws["misspelling"]:
        out = _misspell(caption, mentioned, rng)
        if out != caption:
            caption = out
            applied.append("misspelling")
    if draws["repeat"]:
        caption = _repeat(caption, rng)
        applied.append("repeat")
    if draws["junk"]:
        token = _junk_token(rng)
        caption = f"{token} {caption}" if rng.random() < 0.5 else f"{caption} {token}"
        applied.append("junk")
    return caption, applied


def karpathy_tokens(text: str) -> list[str]:
    """Lower-case word tokens as in the Karpathy splits."""
    return re.findall(r"[a-z0-9]+", text.lower())


def distinct_captions(
    objects: Sequence[dict], rng: np.random.Generator, background: str | None, n: int = 5
) -> list[str]:
    """n clean captions, distinct where possible."""
    caps: list[str] = []
    for _ in range(20 * n):
        cap = clean_caption(objects, rng, background)
        if cap not in caps:
            caps.append(cap)
        if len(caps) == n:
            return caps
    while len(caps) < n:
        caps.append(clean_caption(objects, rng, background))
    return caps

