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

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lightning_juicer.errors import ConfigError
from lightning_juicer.text.prompts import PromptConfig, Request, build_messages
from lightning_juicer.text.rules import RulesConfig, RulesRepair, Vocabulary


@dataclass
class TransformersConfig:
    """The ``transformers`` backend: model folder or cached name, dtype, generation bounds."""

    model: str | None = None
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
        self.repair = RulesRepair(vocab, cfg)
        settings = asdict(cfg)
        settings.pop("vocab_shards")
        self.settings = {**settings, "vocab": vocab_id}

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


class TransformersBackend:
    """A causal LM with a chat template, greedy and batched with left padding."""

    name = "transformers"

    def __init__(self, cfg: TransformersConfig, prompts: PromptConfig) -> None:
        if not cfg.model:
            raise ConfigError(
                "backend.transformers.model: the transformers backend needs a local model folder or a name in the "
                "local Hugging Face cache; or set backend.name=rules for the offline rules backend"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(cfg.model, local_files_only=True, dtype=_dtype(cfg.dtype))
        except OSError as e:
            raise ConfigError(f"backend.transformers.model: cannot load {cfg.model!r} offline: "
                              f"{' '.join(str(e).split())[:300]}") from e
        if not self.tokenizer.chat_template:
            raise ConfigError(f"backend.transformers.model: {cfg.model} has no chat template; use an instruction model")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.module: nn.Module = model.eval().requires_grad_(False)
        self.cfg = cfg
        self.prompts = prompts
        model_id = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
        self.settings = {"model": model_id, "dtype": str(model.dtype), "max_new_tokens": cfg.max_new_tokens,
                         "new_tokens_ratio": cfg.new_tokens_ratio, "new_tokens_extra": cfg.new_tokens_extra,
                         "prompts": asdict(prompts)}

    def prompt(self, request: Request) -> str:
        """The chat-templated prompt text of one request."""
        return self.tokenizer.apply_chat_template(build_messages(request, self.prompts), tokenize=False,
                                                  add_generation_prompt=True)

    def new_tokens(self, requests: Sequence[Request]) -> int:
        """New-token budget of a batch: ratio x the longest original caption's tokens + extra, capped."""
        longest = max(len(self.tokenizer(r.caption, add_special_tokens=False)["input_ids"]) for r in requests)
        return max(1, min(self.cfg.max_new_tokens, math.ceil(self.cfg.new_tokens_ratio * longest)
                          + self.cfg.new_tokens_extra))

    @torch.no_grad()
    def rewrite(self, requests: Sequence[Request]) -> list[str]:
        """Greedy generation for the whole batch; the answers decoded without special tokens."""
        if not requests:
            return []
        inputs = self.tokenizer([self.prompt(r) for r in requests], return_tensors="pt", padding=True,
                                add_special_tokens=False)
        device = next(self.module.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = self.module.generate(**inputs, max_new_tokens=self.new_tokens(requests), do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


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
