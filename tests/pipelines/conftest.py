"""Fixtures for the Qwen3-VL pipeline tests: a tiny random Qwen3-VL, its processor and small images (offline).

Qwen3-VL's image processor needs torchvision: every test module that builds it calls
``pytest.importorskip("torchvision")`` first."""

from __future__ import annotations

import pytest

from tests.helpers import noise_image


@pytest.fixture
def processor():
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl_processor

    return build_tiny_qwen3_vl_processor()


@pytest.fixture
def tiny_vl(processor):
    """A tiny random Qwen3VLForMaskedLM (nothing frozen) with a mask token, and its processor."""
    from dllm.core.models import add_mask_token
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl

    model, processor = build_tiny_qwen3_vl(processor)
    add_mask_token(model, processor.tokenizer)
    return model, processor


@pytest.fixture
def image():
    return noise_image()
