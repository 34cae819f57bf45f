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


def save_tiny_masked_lm(path: Path, *, gen_length: int | None = None, **config_overrides) -> Path:
    """A tiny LLaMA masked LM with the character tokenizer (its special ids in the config) saved to ``path``,
    plus saved sampler settings when ``gen_length`` is given; the kind of checkpoint `dllm demo` writes."""
    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.sampling import DiffusionGenerationConfig
    from dllm.demo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               mask_token_id=tokenizer.mask_token_id, **config_overrides)
    AutoModelForMaskedDiffusion.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if gen_length is not None:
        DiffusionGenerationConfig(gen_length=gen_length).save_pretrained(path)
    return path
