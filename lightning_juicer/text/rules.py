"""The ``rules`` text governor: deterministic caption repair without a model.

Steps, in order: Unicode and whitespace normalisation, junk removal (URLs, image file names, camera
names such as ``IMG_1234``/``DSC01234``, hashtags and configured spam phrases), lower case for shouted
captions, misspellings corrected against a vocabulary of frequent corpus words, adjacent repeated
words, and an evidence phrase for each evidence class the caption does not mention.

**Spelling.** A word is corrected only when it is rare in the corpus (fewer than ``min_count``
occurrences) or when a word one edit away (Damerau) is at least ``ratio`` times more frequent and the
word itself is not frequent (``keep_count``). Candidates come from the simplest typo first (an
undoubled letter or swapped neighbours, then a dropped or added letter, then a replaced one); the most
frequent word of the first tier that has any wins. Web typos are rare and scattered over many
forms, while the words they come from are frequent, so both tests find them; plurals of known words
are kept. A word of the **dictionary** (``dictionary``: a word list, one word per line; ``auto`` is the
system's ``/usr/share/dict/words``, e.g. Debian's ``wamerican``) is never corrected, however much more
frequent a neighbour is in the corpus: a frequent typo ("ver") must not replace a real word ("very").
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_juicer.errors import ConfigError
from lightning_juicer.io.atomic import atomic_write

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_URL = re.compile(r"(?:https?://|www\.)\S+|\S+\.(?:com|net|org|io|co|de|uk)(?:/\S*)?\b", re.IGNORECASE)
_FILE = re.compile(r"\S+\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic)\b", re.IGNORECASE)
_CAMERA = re.compile(r"\b(?:IMG|DSC|DSCN|DCIM|PIC|P)_?\d{3,}\b", re.IGNORECASE)
_HASHTAG = re.compile(r"(?<!\w)#\w+")
_PUNCT = ".,;:!?"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SYSTEM_DICTIONARY = Path("/usr/share/dict/words")
log = logging.getLogger(__name__)
DEFAULT_JUNK_PHRASES = ("click here", "stock photo", "free download", "best price", "buy now", "royalty free")


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters and inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


@dataclass
class RulesConfig:
    """How ``RulesRepair`` repairs (the ``rules`` backend's settings, less where its vocabulary comes from)."""

    min_count: int = 3
    ratio: float = 10.0
    keep_count: int = 100
    junk_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_JUNK_PHRASES))
    evidence_phrase: str = "with {objects}"
    dictionary: str | None = "auto"


def load_dictionary(spec: str | None, key: str = "backend.init_args.dictionary") -> tuple[frozenset[str], str | None]:
    """Lower-case words of a word list (``auto``: the system's, when installed; null: none) and its id."""
    if spec is None or spec == "none":
        return frozenset(), None
    path = SYSTEM_DICTIONARY if spec == "auto" else Path(spec)
    if not path.is_file():
        if spec == "auto":
            log.warning("rules: no system word list at %s (apt-get install wamerican): dictionary words are "
                        "not protected from correction", path)
            return frozenset(), None
        raise ConfigError(f"{key}: {spec} not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    found = frozenset(w.lower() for w in re.findall(r"^[A-Za-z]+$", text, re.MULTILINE))
    return found, f"{path.name}:{hashlib.sha1(' '.join(sorted(found)).encode()).hexdigest()[:12]}"


class Vocabulary:
    """Word frequencies of a caption corpus, with the frequent-word spelling corrector."""

    def __init__(self, counts: Counter[str] | dict[str, int]) -> None:
        self.counts: Counter[str] = Counter(counts)

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> Vocabulary:
        """Count the words of the captions."""
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(words(caption))
        return cls(counts)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read ``{"counts": {word: n}}`` JSON, or a text file of ``word`` / ``word<TAB>count`` lines."""
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            return cls(json.loads(text)["counts"])
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            parts = line.split()
            if parts:
                counts[parts[0].lower()] += int(parts[1]) if len(parts) > 1 else 10**6
        return cls(counts)

    def save(self, path: str | Path) -> Path:
        """Write the counts as JSON, atomically (several ranks may write the same file)."""
        data = json.dumps({"counts": dict(self.counts.most_common())}).encode()
        return atomic_write(path, lambda f: f.write(data))

    def add(self, names: Iterable[str], count: int) -> None:
        """Make sure the words of ``names`` (e.g. class names) count at least ``count``."""
        for name in names:
            for word in words(name):
                self.counts[word] = max(self.counts[word], count)

    @staticmethod
    def edit_tiers(word: str) -> list[set[str]]:
        """Strings one Damerau edit away, simplest typos first: [undoubled letter or swapped
        neighbours, dropped or added letter, replaced letter]."""
        splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
        undoubled = {a + b[1:] for a, b in splits if len(b) > 1 and b[0] == b[1]}
        transposes = {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1 and b[0] != b[1]}
        deletes = {a + b[1:] for a, b in splits if b} - undoubled
        inserts = {a + c + b for a, b in splits for c in _LETTERS}
        replaces = {a + c + b[1:] for a, b in splits if b for c in _LETTERS}
        tiers = [undoubled | transposes, deletes | inserts, replaces]
        return [tier - {word} - set().union(*tiers[:i]) for i, tier in enumerate(tiers)]

    @classmethod
    def edits(cls, word: str) -> set[str]:
        """Every string one Damerau edit away from ``word``."""
        return set().union(*cls.edit_tiers(word))

    def correct(self, word: str, min_count: int, ratio: float, keep_count: int,
                dictionary: frozenset[str] | set[str] = frozenset()) -> str:
        """The lower-case correction of a lower-case word (the word itself when it needs none).

        A dictionary word is never corrected."""
        own = self.counts.get(word, 0)
        if own >= keep_count or word in dictionary:
            return word
        if word.endswith("s") and not word.endswith("ss") and self.counts.get(word[:-1], 0) >= min_count:
            return word  # the plural of a known word
        for tier in self.edit_tiers(word):
            candidates = [(self.counts[c], c) for c in tier if self.counts.get(c, 0) >= min_count]
            if candidates:
                best_count, best = max(candidates)
                return best if own < min_count or best_count >= ratio * own else word
        return word


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def normalise(text: str) -> str:
    """NFKC, with control characters and runs of whitespace removed."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).split())


def fix_case(text: str) -> str:
    """Shouted text (mostly upper-case words) in lower case with a capital first letter."""
    tokens = _WORD.findall(text)
    if tokens and sum(t.isupper() and len(t) > 1 for t in tokens) > len(tokens) / 2:
        text = text.lower()
        text = text[:1].upper() + text[1:]
    return text


def drop_junk(text: str, phrases: Sequence[str]) -> str:
    """Remove URLs, image file names, camera file stems, hashtags and the given spam phrases."""
    for pattern in (_URL, _FILE, _CAMERA, _HASHTAG):
        text = pattern.sub(" ", text)
    for phrase in phrases:
        text = re.sub(rf"(?<!\w){re.escape(phrase)}(?!\w)", " ", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text.strip(" ,;:-|")


def drop_repeats(text: str) -> str:
    """Remove a word that repeats the word before it (case and trailing punctuation ignored)."""
    out: list[str] = []
    for token in text.split(" "):
        base = token.rstrip(_PUNCT)
        if out and base and base.lower() == out[-1].rstrip(_PUNCT).lower():
            prev = out[-1].rstrip(_PUNCT)
            out[-1] = prev + (out[-1][len(prev):] or token[len(base):])
            continue
        out.append(token)
    return " ".join(out)


def mentions(text: str, name: str) -> bool:
    """Whether a class name (or its simple plural) occurs in the text as whole words."""
    target = words(name)
    if not target:
        return True
    tokens = [w[:-1] if w.endswith("s") and w[:-1] == target[-1] else w for w in words(text)]
    n = len(target)
    return any(tokens[i : i + n] == target for i in range(len(tokens) - n + 1))


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def evidence_phrase(names: Sequence[str], template: str) -> str:
    """'with a circle and a star' for the given class names."""
    items = [_article(n) for n in names]
    objects = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return template.format(objects=objects)


class RulesRepair:
    """Deterministic repair of one caption with the vocabulary and the evidence classes."""

    def __init__(self, vocab: Vocabulary, cfg: RulesConfig, dictionary: frozenset[str] = frozenset()) -> None:
        self.vocab = vocab
        self.cfg = cfg
        self.dictionary = dictionary

    def spell(self, text: str) -> str:
        """Correct every word against the vocabulary, keeping its case."""
        cfg = self.cfg

        def fix(match: re.Match) -> str:
            word = match.group(0)
            new = self.vocab.correct(word.lower(), cfg.min_count, cfg.ratio, cfg.keep_count, self.dictionary)
            return word if new == word.lower() else _match_case(new, word)

        return _WORD.sub(fix, text)

    def repair(self, caption: str, evidence: Sequence[str] = ()) -> str:
        """The repaired caption, with an evidence phrase for the classes it does not mention."""
        text = drop_repeats(self.spell(fix_case(drop_junk(normalise(caption), self.cfg.junk_phrases))))
        missing = [name for name in evidence if not mentions(text, name)]
        if missing:
            end = len(text.rstrip(".!"))
            text = f"{text[:end]} {evidence_phrase(missing, self.cfg.evidence_phrase)}{text[end:]}".strip()
        return text
