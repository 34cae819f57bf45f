"""Block-diffusion decoding: the exact block cache gives the tokens of recomputing the whole sequence every step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import Gemma2ForCausalLM, LlamaForCausalLM

from dllm.core.models.masked_lm import masked_lm_class, set_block_diffusion
from dllm.core.sampling import REMASKING, BlockLayout, DiffusionGenerationConfig, generate, generation_defaults, infill
from dllm.core.sampling.text import left_pad
from tests.helpers import tiny_gemma2_config, tiny_llama_config

VOCAB, MASK_ID, PAD_ID, BLOCK = 48, 3, 0, 4


def bd3lm(family: str = "llama", seed: int = 0):
    cls, make_config = {"llama": (LlamaForCausalLM, tiny_llama_config),
                        "gemma2": (Gemma2ForCausalLM, tiny_gemma2_config)}[family]
    config = make_config(vocab_size=VOCAB, mask_token_id=MASK_ID)
    config._attn_implementation = "sdpa" if family == "llama" else "eager"
    torch.manual_seed(seed)
    model = masked_lm_class(cls)(config).double().eval()
    set_block_diffusion(model.config, BLOCK)
    return model


def prompts(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` left-padded prompts of 2 to 9 tokens: their ends fall at every offset inside a block."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, VOCAB, (2 + i % 8,), generator=g).tolist() for i in range(n)]
    return left_pad(rows, PAD_ID)


def config(**overrides) -> DiffusionGenerationConfig:
    return DiffusionGenerationConfig(**{"gen_length": 10, "mask_token_id": MASK_ID, "pad_token_id": PAD_ID,
                                        "cache": "block", **overrides})


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("threshold", [None, 0.05], ids=["fixed", "threshold"])
@pytest.mark.parametrize("remasking", REMASKING)
def test_the_block_cache_gives_the_tokens_of_no_cache(remasking, threshold, batch):
    model = bd3lm()
    ids, mask = prompts(batch)
    settings = config(remasking=remasking, threshold=threshold)
    cached = generate(model, ids, settings, mask, generator=torch.Generator().manual_seed(0))
    reference = generate(model, ids, replace(settings, cache="none"), mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached.sequences, reference.sequences)
    assert cached.sequences.shape == (batch, ids.shape[1] + 10)
    assert not (cached.sequences == MASK_ID).any()
    assert torch.equal(cached.sequences[:, :ids.shape[1]], ids)
    assert cached.forward_passes == reference.forward_passes  # committing a block costs no forward of its own


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_prompt_decodes_alike_alone_and_in_a_left_padded_batch_with_guidance_and_eos(family):
    model = bd3lm(family)
    ids, mask = prompts(8)
    first = generate(model, ids, config(), mask).sequences
    eos = int(first[:, ids.shape[1]:].flatten().mode().values)  # the model's commonest token: EOS ends answers
    settings = config(eos_token_id=eos, cfg_scale=0.5)  # steps=None: per-block budgets independent of the batch
    batch = generate(model, ids, settings, mask)
    assert torch.equal(batch.sequences, generate(model, ids, replace(settings, cache="none"), mask).sequences)
    ended = 0
    for row in range(8):
        alone = generate(model, ids[row:row + 1, mask[row] == 1], settings).sequences[0]
        assert torch.equal(alone[-10:], batch.sequences[row, -10:])
        answer = batch.sequences[row, ids.shape[1]:]
        hits = (answer == eos).nonzero()
        if len(hits):  # the blocks after the one holding the first EOS are all EOS
            assert (answer[(int(hits[0]) // BLOCK + 2) * BLOCK:] == eos).all()
            ended += 1
    assert ended >= 2


def test_the_layout_aligns_each_rows_blocks_to_its_sequence_start():
    ids, mask = prompts(3)  # 2, 3 and 4 prompt tokens
    layout = BlockLayout.of(mask, BLOCK, gen_length=5)
    x, attention, given = layout.canvas(ids, config(gen_length=5))
    positions = attention.cumsum(dim=1) - 1
    assert layout.start == 4 and x.shape[1] == 4 + 2 * BLOCK  # the 4-token prompt is one whole block
    for row, n in enumerate((2, 3, 4)):
        first = int(attention[row].nonzero()[0])
        assert first % BLOCK == 0  # position 0 of every row opens a block
        assert x[row, first:first + n].tolist() == ids[row, -n:].tolist() and given[row].sum() == n
        assert (x[row, first + n:first + n + 5] == MASK_ID).all() and attention[row].sum() == n + 5
        assert positions[row, layout.start] == (n // BLOCK) * BLOCK  # the first decoded block starts a block
    assert torch.equal(layout.to_caller(ids, x)[:, -5:], torch.full((3, 5), MASK_ID))


def test_block_cache_and_block_size_rules_and_checkpoint_defaults(tmp_path):
    model, ids, mask = bd3lm(), *prompts(2)
    with pytest.raises(ValueError, match="blocks of 4"):
        generate(model, ids, config(block_size=8), mask)
    with pytest.raises(ValueError, match="cache='dual'"):
        generate(model, ids, config(cache="dual"), mask)
    with pytest.raises(ValueError, match="infilling"):
        infill(model, ids, config(), mask)
    plain = masked_lm_class(LlamaForCausalLM)(tiny_llama_config(vocab_size=VOCAB))
    with pytest.raises(ValueError, match="cache='block' needs a block-diffusion model"):
        generate(plain, ids, config(), mask)
    generation_defaults(model.config, gen_length=12).save_pretrained(tmp_path)
    saved = DiffusionGenerationConfig.from_pretrained(tmp_path)
    assert (saved.cache, saved.block_size, saved.gen_length) == ("block", BLOCK, 12)
    assert generation_defaults(plain.config, gen_length=12) == DiffusionGenerationConfig(gen_length=12)


def test_the_demo_trains_block_diffusion_and_saves_its_block_cache(tmp_path, capsys):
    """``dllm demo --objective bd3lm`` end to end, a few steps: the checkpoint is block-diffusion and its saved
    sampler settings are the block cache with the trained block size."""
    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.models.masked_lm import block_diffusion_size
    from dllm.demo.run import main

    out = tmp_path / "demo"
    result = main(["--output_dir", str(out), "--objective", "bd3lm", "--block_size", "2", "--max_steps", "4",
                   "--num_eval_per_task", "2", "--num_hidden_layers", "1", "--hidden_size", "32",
                   "--intermediate_size", "64", "--per_device_train_batch_size", "4", "--no_plot"])
    assert result["steps"] == 4 and result["total"] == 6
    assert "objective bd3lm (blocks of 2)" in capsys.readouterr().out
    assert block_diffusion_size(AutoModelForMaskedDiffusion.from_pretrained(out).config) == 2
    saved = DiffusionGenerationConfig.from_pretrained(out)
    assert (saved.cache, saved.block_size, saved.gen_length) == ("block", 2, 7)
