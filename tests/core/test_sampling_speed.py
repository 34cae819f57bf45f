"""The sampler step's fast paths (:class:`dllm.core.sampling.BlockForward`): an unpadded canvas runs without an
attention mask and a block's forward inputs are sliced once, and neither changes a logit; the step without history
commits what :func:`dllm.core.sampling.denoise_step` commits."""

from __future__ import annotations

import pytest
import torch

from dllm.core.sampling import BlockForward, DiffusionGenerationConfig, denoise_step, generate, position_ids
from dllm.core.sampling.loop import commit_step, masked_columns
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_gemma2_config, tiny_llama_config

MASK = 4


@pytest.fixture(scope="module", params=["llama3-sdpa", "gemma2-eager"])
def model(request):
    torch.manual_seed(0)
    if request.param == "llama3-sdpa":
        return Llama3ForMaskedLM(tiny_llama_config(initializer_range=0.3, attn_implementation="sdpa")).eval()
    return Gemma2ForMaskedLM(tiny_gemma2_config(initializer_range=0.3, sliding_window=64,
                                                attn_implementation="eager")).eval()


def unpadded_canvas(length: int = 14, answer: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randint(5, 60, (2, length), generator=torch.Generator().manual_seed(1))
    x[:, length - answer:] = MASK
    attention = torch.ones_like(x)
    return x, attention, position_ids(attention)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_maskless_forward_gives_the_masked_forwards_logits(model, cache):
    """Every call of a block (block start, refinements after a commit) equals the forward given the all-ones mask
    over its cached and fed keys, bit for bit."""
    x, attention, positions = unpadded_canvas()
    start, end = 8, 12
    cols = torch.arange(start, end)
    fast = BlockForward(model, cache, attention, positions, start, end)
    assert fast.maskless
    masked = BlockForward(model, cache, attention, positions, start, end)
    masked.maskless = False  # the general path: the canvas's mask in cache order, sliced per call
    later = x.clone()
    later[:, start] = 50
    with torch.no_grad():
        for canvas in (x, later, later):
            assert torch.equal(fast(canvas, cols), masked(canvas, cols))
    assert len(fast._inputs) == (1 if cache == "none" else 2)  # sliced once per kind of call


def test_padded_canvas_keeps_its_mask(model):
    x, attention, positions = unpadded_canvas()
    attention[1, :3] = 0
    assert not BlockForward(model, "dual", attention, positions, 8, 12).maskless


def test_step_without_history_commits_what_denoise_step_commits(model):
    x, attention, positions = unpadded_canvas()
    config = DiffusionGenerationConfig(gen_length=8, threshold=0.2, mask_token_id=MASK)
    with torch.no_grad():
        new, committed, scores = denoise_step(BlockForward(model, "none", attention, positions, 6, 14), x,
                                              (6, 14), 4, config)
        cols = masked_columns(x, (6, 14), config)
        fast, commit, score = commit_step(BlockForward(model, "none", attention, positions, 6, 14), x, cols, 4,
                                          config)
    assert torch.equal(new, fast)
    assert torch.equal(committed[:, cols], commit) and not committed[:, :6].any()
    assert torch.equal(scores[:, cols][commit], score[commit])


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_unpadded_and_padded_batches_agree(model, cache):
    """A row generated alone (maskless) equals the same row in a left-padded batch (masked path)."""
    prompt = torch.tensor([[1, 20, 31, 42, 53]])
    config = DiffusionGenerationConfig(gen_length=8, block_size=4, steps=4, cache=cache, mask_token_id=MASK)
    batch = torch.tensor([[0, 0, 1, 20, 31], [1, 20, 31, 42, 53]])
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    alone = generate(model, prompt, config).sequences
    together = generate(model, batch, config, attention_mask=attention).sequences
    assert torch.equal(alone[0], together[1])


def test_sampled_tensors_are_ordinary_and_train_the_model(model):
    """The model runs in inference mode inside the sampler; nothing that leaves it is an inference tensor, so the
    answers feed a training step of the same model (as GRPO does)."""
    x, attention, positions = unpadded_canvas()
    config = DiffusionGenerationConfig(gen_length=6, block_size=3, cache="dual", mask_token_id=MASK,
                                       record_history=True)
    with torch.no_grad():
        logits = BlockForward(model, "prefix", attention, positions, 8, 12)(x, torch.arange(8, 12))
    out = generate(model, x[:, :8], config)
    assert not logits.is_inference() and not out.sequences.is_inference()
    assert not any(step.tokens.is_inference() or step.confidence.is_inference() for step in out.history)
    model.zero_grad()
    model(input_ids=out.sequences).logits.sum().backward()
    assert model.get_input_embeddings().weight.grad is not None
    model.zero_grad()
