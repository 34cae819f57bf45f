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


@pytest.fixture(scope="session")
def import_footprint():
    """``name -> the module names imported after the registered import step name`` (tests/helpers.py
    IMPORT_STEPS), every step measured in one fresh interpreter started once per test run."""
    from pathlib import Path

    from tests.helpers import import_footprints

    return import_footprints(Path(__file__).resolve().parents[1])
