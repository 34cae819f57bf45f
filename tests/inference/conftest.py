"""A tiny saved checkpoint (LLaMA masked LM, char tokenizer, saved sampler settings gen_length=8), built once."""

from __future__ import annotations

import pytest

from tests.helpers import save_tiny_masked_lm


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint folder named ``tiny-dllm``. ``initializer_range=0.2``: a random model at the default 0.02
    gives the same few answers to most prompts, this one answers each of 32 test prompts differently."""
    return save_tiny_masked_lm(tmp_path_factory.mktemp("checkpoints") / "tiny-dllm", gen_length=8,
                               initializer_range=0.2)
