"""How many injected caption errors a text governor repaired, measured against the synthetic generator's clean captions.

Each synthetic sample records its clean caption and the noise applied (``lightning_juicer.synthetic``). An
injected **misspelling** is a word of the noisy caption that the clean caption lacks but that is one
edit away from a clean word; it is repaired when the output no longer has it and has the clean word.
An injected **repeat** is an adjacent duplicate word that the clean caption does not have; it is
repaired when the output has no adjacent duplicate of that word (or of its clean spelling) and still
has the word. Junk is repaired when no word of the junk token is left. Samples whose only noise is
misspellings, repeats and junk should come back as the clean caption (``exact``, case and punctuation
ignored, evidence phrases allowed after it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping

import webdataset as wds

from lightning_juicer.synthetic import COLORS
from lightning_juicer.text.rules import Vocabulary, words

TEXT_ONLY_NOISE = {"misspelling", "repeat", "junk"}


def synthetic_records(urls: Iterable[str]) -> dict[str, dict]:
    """The generator's per-sample records (noisy and clean caption, noise types) of synthetic shards, by key."""
    return {str(s["__key__"]): json.loads(s["json"]) for url in urls
            for s in wds.tarfile_samples(iter([{"url": url}])) if "json" in s}


def _adjacent_repeats(tokens: list[str]) -> Counter[str]:
    return Counter(a for a, b in zip(tokens, tokens[1:]) if a == b)


def _misspellings(noisy: list[str], clean: list[str]) -> list[tuple[str, str]]:
    """(typo, clean word) pairs: noisy words missing from the clean caption but one edit from a clean word."""
    long_words, pairs = {w for w in clean if len(w) >= 3}, []  # the generator misspells words of 3+ letters
    for word in dict.fromkeys(noisy):
        if word in clean or len(word) < 2:
            continue
        near = Vocabulary.edits(word) & long_words
        if near:
            pairs.append((word, sorted(near)[0]))
    return pairs


def repair_counts(records: Mapping[str, dict], outputs: Mapping[str, str | None]) -> dict[str, dict[str, int]]:
    """Injected and repaired misspellings, repeats and junk tokens, and exact clean recoveries, over the outputs."""
    counts = {name: Counter() for name in ("misspelling", "repeat", "junk", "exact")}
    for key, record in records.items():
        output = outputs.get(key)
        if output is None:
            continue
        noisy, clean, out = words(record["caption"]), words(record["clean_caption"]), words(output)
        out_set, noise = set(out), set(record["noise"])
        typos = dict(_misspellings(noisy, clean)) if "misspelling" in noise else {}
        for typo, fixed in typos.items():
            counts["misspelling"]["injected"] += 1
            counts["misspelling"]["repaired"] += typo not in out_set and fixed in out_set
        if "repeat" in noise:
            left = _adjacent_repeats(out)
            for word, n in (_adjacent_repeats(noisy) - _adjacent_repeats(clean)).items():
                fixed = typos.get(word, word)
                counts["repeat"]["injected"] += n
                counts["repeat"]["repaired"] += n * (not left[word] and not left[fixed] and fixed in out_set)
        if "junk" in noise:
            junk = set(noisy) - set(clean) - set(typos) - set(COLORS) - {"a", "an"}  # minus wrong_color's changes
            counts["junk"]["injected"] += 1
            counts["junk"]["repaired"] += not (junk & out_set)
        if noise <= TEXT_ONLY_NOISE:
            counts["exact"]["injected"] += 1
            counts["exact"]["repaired"] += out[: len(clean)] == clean
    return {name: dict(c) for name, c in counts.items()}


def repair_rates(counts: Mapping[str, Mapping[str, int]]) -> dict[str, float | None]:
    """repaired / injected per error type (None when none was injected)."""
    return {name: (c.get("repaired", 0) / c["injected"] if c.get("injected") else None) for name, c in counts.items()}
