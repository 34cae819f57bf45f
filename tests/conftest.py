"""Shared fixtures and test-run settings (helpers that test modules import live in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread: the tiny models gain nothing from a second, and on busy shared cores a second thread made one
# tiny forward 400x slower (250 ms against 0.6 ms, measured).
torch.set_num_threads(1)


@pytest.fixture
def char_tokenizer():
    from dllm.demo.tokenizer import build_char_tokenizer

    return build_char_tokenizer()
