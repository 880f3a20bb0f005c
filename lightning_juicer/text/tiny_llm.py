"""A random chat LLM folder (Llama, word-level tokenizer with a chat template) for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<caption>", "</caption>")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def save_tiny_chat_llm(folder: str | Path, texts: Iterable[str], hidden: int = 32, layers: int = 2, heads: int = 4,
                       kv_heads: int = 2, intermediate: int | None = None, seed: int = 0) -> Path:
    """Save a random ``LlamaForCausalLM`` and a tokenizer whose vocabulary is the words of ``texts`` to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.lower().split()} - set(SPECIALS))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    folder = Path(folder)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
