"""Helpers shared by test modules: tiny model configs (import from here, never from another test module)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast


def tiny_llama_config(vocab_size: int = 128, **overrides):
    from transformers import LlamaConfig

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_gemma2_config(vocab_size: int = 128, **overrides):
    from transformers import Gemma2Config

    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return Gemma2Config(**values)


def alpaca_fixture(path: Path, n: int = 24) -> Path:
    rows = [{"instruction": f"Repeat {i}", "input": "" if i % 2 else "twice", "output": f"{i} {i}"} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def checkpoint_without_mask_token(tmp_path, char_tokenizer, causal_cls, config):
    """A causal checkpoint whose tokenizer has no mask token (like LLaMA 3): the script must add one."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer, bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    torch.manual_seed(0)
    path = tmp_path / "base"
    causal_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, len(tokenizer)
