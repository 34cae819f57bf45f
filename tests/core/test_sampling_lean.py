"""The sampler's lean forward (:mod:`dllm.core.sampling.lean`) computes what transformers' forward computes: the
same logits per family (LLaMA, Qwen2 with biases, Qwen3 with query/key norms; grouped-query attention), padded or
not, without a cache and through its in-place cache at every refinement step, and the same sampled tokens; it
is used only where that holds."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

import dllm.core.sampling.forward as forward_module
from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import BlockForward, DiffusionGenerationConfig, generate, position_ids
from dllm.core.sampling.lean import LeanCache, lean_decoder, lean_logits
from tests.helpers import tiny_gemma2_config, tiny_llama_config, tiny_qwen3_config

MASK = 4


def tiny_qwen2_config(**overrides):
    values = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return Qwen2Config(**values)


CONFIGS = {
    "llama-gqa": lambda **kw: tiny_llama_config(num_hidden_layers=3, **kw),
    "llama-mha": lambda **kw: tiny_llama_config(num_key_value_heads=4, **kw),
    "qwen2-bias": tiny_qwen2_config,
    "qwen3-qk-norm": tiny_qwen3_config,
}


def build(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[name](**{"initializer_range": 0.3, "attn_implementation": "sdpa", **overrides})
    return AutoModelForMaskedDiffusion.from_config(config).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return build(request.param)


def canvas(padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(5, 120, (3, 20), generator=torch.Generator().manual_seed(3))
    x[:, 12:] = MASK
    attention = torch.ones_like(x)
    if padded:
        attention[0, :5] = 0
        attention[2, :1] = 0
    return x, attention


@pytest.mark.parametrize("padded", [False, True])
def test_lean_logits_equal_the_models_forward(model, padded):
    """No cache: every kept column's logits are the model's own forward's (the last layer runs on those only)."""
    x, attention = canvas(padded)
    keep = torch.tensor([12, 13, 17])
    with torch.no_grad():
        assert lean_decoder(model)
        expected = model(input_ids=x, attention_mask=attention, position_ids=position_ids(attention)).logits[:, keep]
        got = lean_logits(model, x, attention if padded else None, position_ids(attention), keep)
    real = attention.bool()[:, keep]  # padded rows: only real columns are compared (none of keep is padding)
    assert real.all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("padded", [False, True])
def test_lean_cache_gives_the_dynamic_caches_logits_at_every_step(model, cache, padded, monkeypatch):
    """A block start and two refinements after commits: the in-place cache gives what transformers' cache gives."""
    x, attention = canvas(padded)
    positions = position_ids(attention)
    cols = torch.arange(12, 16)
    plain_x, lean_x = x.clone(), x.clone()
    with torch.no_grad():
        lean = BlockForward(model, cache, attention, positions, 12, 16)
        with monkeypatch.context() as patch:
            patch.setattr(forward_module, "lean_decoder", lambda *args, **kwargs: False)
            plain = BlockForward(model, cache, attention, positions, 12, 16)
        assert lean.lean and not plain.lean
        for step in range(3):
            torch.testing.assert_close(lean(lean_x, cols), plain(plain_x, cols), rtol=1e-5, atol=1e-5)
            for canvas_x in (lean_x, plain_x):  # commit one column of the block
                canvas_x[:, 12 + step] = 7 + step
        assert isinstance(lean.cache, LeanCache) and lean.cache.keys[0].shape[2] == x.shape[1]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_lean_sampler_commits_the_same_tokens(model, cache, monkeypatch):
    """Whole answers, two blocks, one token per step, a left-padded batch: identical to the plain path."""
    prompt = torch.randint(5, 120, (3, 10), generator=torch.Generator().manual_seed(5))
    attention = torch.ones_like(prompt)
    attention[0, :4] = 0
    config = DiffusionGenerationConfig(gen_length=16, steps=16, block_size=8, cache=cache, mask_token_id=MASK,
                                       eos_token_id=None)
    lean = generate(model, prompt, config, attention_mask=attention)
    monkeypatch.setattr(forward_module, "lean_decoder", lambda *args, **kwargs: False)
    plain = generate(model, prompt, config, attention_mask=attention)
    assert torch.equal(lean.sequences, plain.sequences)
    assert lean.forward_passes == plain.forward_passes


def test_lean_path_only_where_it_is_exact():
    llama = build("llama-gqa")
    with torch.no_grad():
        assert lean_decoder(llama)
        assert not lean_decoder(llama, {"pixel_values": torch.zeros(1)})  # extra inputs: transformers' forward
        llama.train()
        assert not lean_decoder(llama)  # dropout and the rest of training mode
        llama.eval()
        for module in (llama, llama.model.layers[1].self_attn):  # a hook the loop would skip: the plain forward
            handle = module.register_forward_hook(lambda *args: None)
            assert not lean_decoder(llama)
            handle.remove()
        assert lean_decoder(llama)
        llama.config._attn_implementation = "eager"  # switched after loading (set_attn_implementation)
        assert not lean_decoder(llama)
        llama.config._attn_implementation = "sdpa"
        assert lean_decoder(llama)
    assert not lean_decoder(llama)  # gradients wanted (a training forward)
    refused = [build("llama-gqa", attn_implementation="eager"),  # eager's arithmetic is not SDPA's
               build("qwen2-bias", use_sliding_window=True, sliding_window=8, max_window_layers=0),
               AutoModelForMaskedDiffusion.from_config(tiny_gemma2_config(attn_implementation="eager")).eval()]
    block = tiny_llama_config(attn_implementation="sdpa")
    block.dllm_objective, block.dllm_block_size = "bd3lm", 4  # a block-diffusion model builds its own mask
    refused.append(AutoModelForMaskedDiffusion.from_config(block).eval())
    with torch.no_grad():
        assert [lean_decoder(m) for m in refused] == [False] * len(refused)
