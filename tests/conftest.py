"""Shared fixtures: tiny models built in-process from configs, saved and reloaded through from_pretrained."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture
def char_tokenizer():
    from dllm.utils.tokenizers import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def tiny_causal_checkpoint(tmp_path, char_tokenizer):
    """An ordinary causal LLaMA checkpoint (as on the hub) with its tokenizer, in a temp dir."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(char_tokenizer)))
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path
