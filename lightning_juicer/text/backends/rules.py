"""``rules``: deterministic repair without a model (``text/rules.py``), the offline default and a baseline.

Its vocabulary is the ``vocab`` file, or counted on the captions of the job's first ``vocab_shards``
shards and cached as ``<work folder>/text_vocab.json`` (delete it to recount): the corpus comes from
the pass through ``setup``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_juicer.errors import ConfigError
from lightning_juicer.text.backends.base import BACKENDS, KEY, BackendContext, TextBackend
from lightning_juicer.text.corpus import corpus_vocabulary
from lightning_juicer.text.prompts import Request
from lightning_juicer.text.rules import DEFAULT_JUNK_PHRASES, RulesConfig, RulesRepair, Vocabulary, load_dictionary

VOCAB_NAME = "text_vocab.json"


def vocabulary_file(vocab: str | None, vocab_shards: int, context: BackendContext) -> Path:
    """The vocabulary file: ``vocab``, else counted on the context's first shards and cached in its work folder."""
    if vocab:
        if not Path(vocab).is_file():
            raise ConfigError(f"{KEY}.vocab: {vocab} not found")
        return Path(vocab)
    if not context.shards or context.work_dir is None:
        raise ConfigError(f"{KEY}.vocab: no vocabulary file and no corpus to count one on")
    path = Path(context.work_dir) / VOCAB_NAME
    if not path.is_file():
        corpus_vocabulary(list(context.shards[: max(1, vocab_shards)])).save(path)
    return path


@BACKENDS.register("rules")
class RulesBackend(TextBackend):
    """Spelling against the corpus vocabulary, junk and repeats removed, evidence classes added as a phrase.

    ``vocab``: a word list / counts file (null: counted on the captions of the first ``vocab_shards``
    shards); ``min_count``: rarer words are unknown and corrected to a frequent word one edit away;
    ``ratio``: a neighbour this many times more frequent also replaces a rare known word; ``keep_count``:
    words seen this often are never changed; ``dictionary``: a word list whose words are never corrected
    (``auto``: ``/usr/share/dict/words`` when installed; null: none).
    """

    def __init__(self, vocab: str | None = None, vocab_shards: int = 64, min_count: int = 3, ratio: float = 10.0,
                 keep_count: int = 100, junk_phrases: Sequence[str] = DEFAULT_JUNK_PHRASES,
                 evidence_phrase: str = "with {objects}", dictionary: str | None = "auto") -> None:
        if vocab_shards < 1 or min_count < 1 or ratio <= 0 or keep_count < 1:
            raise ConfigError(f"{KEY}: vocab_shards, min_count, keep_count must be >= 1 and ratio > 0 (got "
                              f"{vocab_shards}, {min_count}, {keep_count}, {ratio})")
        self.vocab = vocab
        self.vocab_shards = vocab_shards
        self.repair_config = RulesConfig(min_count, ratio, keep_count, list(junk_phrases), evidence_phrase,
                                         dictionary)
        self.repair: RulesRepair | None = None
        self.ids: dict[str, str | None] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The repair settings, with the vocabulary and the dictionary as ``name:digest`` (known after setup)."""
        return {**vars(self.repair_config), **self.ids}

    def setup(self, context: BackendContext) -> RulesBackend:
        """Load (or count and cache) the vocabulary and the dictionary."""
        path = vocabulary_file(self.vocab, self.vocab_shards, context)
        vocabulary = Vocabulary.load(path)
        digest = hashlib.sha1(json.dumps(sorted(vocabulary.counts.items())).encode()).hexdigest()[:12]
        dictionary, dictionary_id = load_dictionary(self.repair_config.dictionary, f"{KEY}.dictionary")
        self.repair = RulesRepair(vocabulary, self.repair_config, dictionary)
        self.ids = {"vocab": f"{path.name}:{digest}", "dictionary": dictionary_id}
        return self

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Repair each caption."""
        if self.repair is None:
            raise RuntimeError("RulesBackend.rewrite before setup()")
        return [self.repair.repair(r.caption, [name for name, _ in r.evidence]) for r in requests]
