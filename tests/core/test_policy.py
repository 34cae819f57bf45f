"""The post-training estimators against enumeration on a tiny model: the ELBO of one token is its exact
log-likelihood (value and gradient), of two tokens the average over both decoding orders; d1's estimate is the
fully-masked forward; the GRPO / DPO pieces against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from dllm.core.policy import (
    ElboNoise,
    clipped_policy_loss,
    diffu_grpo_token_logps,
    dpo_loss,
    draw_elbo_noise,
    draw_prompt_masks,
    group_advantages,
    k3_kl,
    sequence_elbo,
)
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_llama_config

MASK, V = 3, 16
PROMPT = torch.tensor([[5, 6, 7]])
PROMPT_MASK = torch.ones_like(PROMPT)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Llama3ForMaskedLM(tiny_llama_config(vocab_size=V, mask_token_id=MASK))
    return m.eval()


def exact_logp(model, completion: list[int], position: int, masked: list[int]) -> torch.Tensor:
    """log p(completion[position] | prompt, completion with ``masked`` positions masked), from one plain forward."""
    shown = [MASK if i in masked else tok for i, tok in enumerate(completion)]
    ids = torch.cat([PROMPT, torch.tensor([shown])], dim=1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, PROMPT.shape[1] + position]
    logits = logits.clone()
    logits[MASK] = float("-inf")
    return logits.log_softmax(-1)[completion[position]]


def grad_of(model, value: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def elbo(model, completion: list[int], noise: ElboNoise) -> torch.Tensor:
    ids = torch.tensor([completion])
    return sequence_elbo(model, PROMPT, PROMPT_MASK, ids, torch.ones_like(ids), noise, MASK)[0]


@pytest.mark.parametrize("estimator", ["time", "count"])
def test_one_token_elbo_and_its_gradient_are_the_exact_log_likelihood(model, estimator):
    """Per draw the estimate is (1{masked} / t) log p; E = log p, and its gradient is the same factor times
    grad log p. "count" always masks the token with weight 1: exact at every draw."""
    exact = exact_logp(model, [9], 0, [0])
    exact_grad = grad_of(model, exact_logp(model, [9], 0, [0]))
    noise = draw_elbo_noise(torch.ones(1, 1), 4000, estimator=estimator, eps=0.05,
                            generator=torch.Generator().manual_seed(0))
    per_draw = noise.weight[0] * noise.masked[0, :, 0]  # [K], the factor multiplying log p in each draw
    factor, se = per_draw.mean(), per_draw.std() / math.sqrt(per_draw.numel())
    estimate = elbo(model, [9], noise)
    assert torch.allclose(estimate, factor * exact, rtol=1e-4)
    assert torch.allclose(grad_of(model, elbo(model, [9], noise)), factor * exact_grad, rtol=1e-3, atol=1e-6)
    assert abs(factor - 1) < 4 * se + 1e-6  # Monte-Carlo tolerance: the factor's mean is 1
    if estimator == "count":
        assert torch.allclose(per_draw, torch.ones_like(per_draw))


def test_two_token_elbo_is_the_average_over_both_decoding_orders(model):
    """E[ELBO] = 1/2 [log p(a|..) + log p(b|a)] + 1/2 [log p(b|..) + log p(a|b)] (any-order MDLM bound)."""
    y = [9, 11]
    orders = 0.5 * (exact_logp(model, y, 0, [0, 1]) + exact_logp(model, y, 1, [1])
                    + exact_logp(model, y, 1, [0, 1]) + exact_logp(model, y, 0, [0]))
    target_grad = grad_of(model, 0.5 * (exact_logp(model, y, 0, [0, 1]) + exact_logp(model, y, 1, [1])
                                        + exact_logp(model, y, 1, [0, 1]) + exact_logp(model, y, 0, [0])))
    # The expectation, enumerated: each mask pattern with its probability times its weight (3 x 1/2 both ways).
    enumerated = ElboNoise(torch.tensor([[[True, True], [True, False], [False, True]]]), torch.full((1, 3), 1.5))
    assert torch.allclose(elbo(model, y, enumerated), orders, rtol=1e-5)
    assert torch.allclose(grad_of(model, elbo(model, y, enumerated)), target_grad, rtol=1e-3, atol=1e-6)
    # And the sampled noise has that expectation: per pattern E[w 1{pattern}] = 1/2.
    for estimator, eps in (("count", 0.0), ("time", 1e-3)):
        noise = draw_elbo_noise(torch.ones(1, 2), 6000, estimator=estimator, eps=eps,
                                generator=torch.Generator().manual_seed(1))
        m, w = noise.masked[0], noise.weight[0]
        for pattern in ([True, True], [True, False], [False, True]):
            hit = w * (m == torch.tensor(pattern)).all(dim=1)
            assert abs(hit.mean() - 0.5) < 4 * hit.std() / math.sqrt(len(hit)) + 1e-3, (estimator, pattern)
        estimate = elbo(model, y, noise)
        per_draw_scale = (w * m.sum(1)).std() / math.sqrt(len(w))
        assert abs(estimate - orders) < 4 * per_draw_scale * orders.abs() + 1e-3


def test_noise_masks_only_real_completion_tokens_and_is_shared(model):
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    noise = draw_elbo_noise(completion_mask, 8, generator=torch.Generator().manual_seed(0))
    assert not noise.masked[0, :, 3].any() and not noise.masked[1, :, 1:].any()
    again = draw_elbo_noise(completion_mask, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise.masked, again.masked) and torch.equal(noise.weight, again.weight)
    ids = torch.tensor([[9, 10, 11, 0], [12, 0, 0, 0]])
    prompts = PROMPT.expand(2, -1)
    with torch.no_grad():
        pair = sequence_elbo(model, prompts, torch.ones_like(prompts), ids, completion_mask, noise, MASK)
        alone = sequence_elbo(model, PROMPT, PROMPT_MASK, ids[1:2, :1], completion_mask[1:2, :1],
                              ElboNoise(noise.masked[1:2, :, :1], noise.weight[1:2]), MASK)
    assert torch.allclose(pair[1], alone[0], atol=1e-5)  # padding after a completion changes nothing
    assert (pair <= 0).all()


def test_diffu_grpo_reads_every_token_from_the_fully_masked_completion(model):
    y = [9, 11]
    ids = torch.tensor([y])
    none = torch.zeros_like(PROMPT, dtype=torch.bool)
    with torch.no_grad():
        logps = diffu_grpo_token_logps(model, PROMPT, PROMPT_MASK, ids, torch.ones_like(ids), none, MASK)
        expected = torch.stack([exact_logp(model, y, 0, [0, 1]), exact_logp(model, y, 1, [0, 1])])
    assert torch.allclose(logps[0], expected, atol=1e-5)
    masks = draw_prompt_masks(torch.tensor([[0, 1, 1, 1]] * 500), 0.3, torch.Generator().manual_seed(0))
    assert not masks[:, 0].any() and abs(masks[:, 1:].float().mean() - 0.3) < 0.03


def test_group_advantages_clip_kl_and_dpo_closed_forms():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    assert torch.allclose(adv[:4], (rewards[:4] - 0.25) / (rewards[:4].std() + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # a group that agrees teaches nothing
    logp = torch.tensor([math.log(1.5), math.log(0.5), 0.0])
    loss, clipped = clipped_policy_loss(logp, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([-1.2, 0.8, -1.0])) and clipped.tolist() == [True, True, False]
    assert torch.allclose(k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 0.0])),
                          torch.tensor([0.0, math.exp(1) - 2]))
    loss, margin = dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-5.0]), 0.1)
    assert torch.allclose(loss, torch.tensor([math.log(2)])) and margin.item() == 0


def test_completion_logps_of_a_block_diffusion_model_read_the_clean_copy():
    """Both completion tokens masked, in different blocks: the second's log-probability is conditioned on the first's
    clean token (the training forward, x_t beside x_0), as the model's plain block-causal forward on
    prompt + [a, MASK] gives it."""
    from transformers import LlamaForCausalLM

    from dllm.core.models import masked_lm_class
    from dllm.core.models.masked_lm import set_block_diffusion
    from dllm.core.policy import completion_logps
    from tests.helpers import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=40, mask_token_id=39)
    config._attn_implementation = "sdpa"
    model = masked_lm_class(LlamaForCausalLM)(config).double().eval()
    set_block_diffusion(model.config, 2)  # [3, 5 | 7, a | b]
    prompt, a, b = [3, 5, 7], 11, 13
    with torch.no_grad():
        logps = completion_logps(model, torch.tensor([prompt + [39, 39]]), torch.ones(1, 5, dtype=torch.long),
                                 torch.tensor([[a, b]]), 39)
        logits = model(input_ids=torch.tensor([prompt + [a, 39]])).logits[0, -1].double()
    logits[39] = float("-inf")
    torch.testing.assert_close(logps[0, 1].double(), torch.log_softmax(logits, -1)[b], rtol=1e-6, atol=1e-6)
