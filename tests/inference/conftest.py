"""Tiny saved checkpoints, built once: a text one (LLaMA masked LM, char tokenizer, saved sampler settings
gen_length=8) and a vision-language one (Qwen3-VL with its processor)."""

from __future__ import annotations

import pytest

from tests.helpers import save_tiny_masked_lm, save_tiny_vl


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint folder named ``tiny-dllm``. ``initializer_range=0.2``: a random model at the default 0.02
    gives the same few answers to most prompts, this one answers each of 32 test prompts differently."""
    return save_tiny_masked_lm(tmp_path_factory.mktemp("checkpoints") / "tiny-dllm", gen_length=8,
                               initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_vl_checkpoint(tmp_path_factory):
    """A tiny random Qwen3-VL folder named ``tiny-vl`` with its processor and mask token, and saved sampler settings
    (8 answer positions, 2 blocks of 4, 4 steps). Skips without torchvision (Qwen3-VL's image processor)."""
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    return save_tiny_vl(tmp_path_factory.mktemp("checkpoints") / "tiny-vl", gen_length=8, block_size=4, steps=4)
