"""Block diffusion training feeds the clean copy only up to the clean context a masked position reads: the
logits at the masked positions equal those of the full ``x_t ⊕ x_0`` forward."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from dllm.core.models.masked_lm import (
    block_diffusion_forward,
    clean_context_end,
    masked_lm_class,
    set_block_diffusion,
)
from tests.helpers import tiny_llama_config

VOCAB, MASK_ID, BLOCK = 64, 3, 3


def test_the_clean_context_ends_where_the_block_of_the_last_masked_position_begins():
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[0, 5] = masked[1, [1, 3]] = True
    assert clean_context_end(masked, torch.arange(8).expand(2, 8), 2) == 4  # row 0's block [4, 6)
    assert clean_context_end(masked[1:], torch.arange(8)[None], 2) == 2
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])  # a second document from column 3
    assert clean_context_end(masked[:1], packed, 2) == 5  # column 5 is position 2: its block opens there
    assert clean_context_end(torch.zeros(2, 8, dtype=torch.bool), torch.arange(8).expand(2, 8), 2) == 0


def test_masked_logits_equal_the_full_forward_with_a_shorter_clean_copy():
    torch.manual_seed(0)
    model = masked_lm_class(LlamaForCausalLM)(tiny_llama_config(vocab_size=VOCAB, mask_token_id=MASK_ID))
    model = model.double().eval()
    set_block_diffusion(model.config, BLOCK)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(4, VOCAB, (2, 11), generator=g)  # [2, 11]
    attention = torch.ones_like(clean)
    attention[1, 8:] = 0  # right padding
    masked = torch.zeros_like(clean, dtype=torch.bool)
    masked[0, [4, 5]] = masked[1, [3, 7]] = True  # last masked blocks open at columns 3 and 6
    noisy = clean.masked_fill(masked, MASK_ID)
    fed = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
    with torch.no_grad():
        full = block_diffusion_forward(model, model, noisy, clean, {"attention_mask": attention}).logits  # [2, 11, V]
        short = block_diffusion_forward(model, model, noisy, clean, {"attention_mask": attention}, masked).logits
    hook.remove()
    assert fed == [22, (11 - 3) + 6]  # the noisy copy from block [3, 6), the clean copy up to column 6
    torch.testing.assert_close(short, full[masked], atol=1e-10, rtol=0)
