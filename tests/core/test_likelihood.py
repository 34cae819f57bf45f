"""The Monte-Carlo ELBO against closed forms (a model with uniform logits pays log(V - 1) nats per masked token,
so the bound's expectation is L log(V - 1)), its standard error against the observed spread, and on a tiny real
model: reproducible, independent of batching, padding side and order, and lower for an answer it was trained on."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dllm.core.diffusion import mask_tokens, masked_diffusion_loss, sample_t
from dllm.core.likelihood import draw_noise, elbo_nll
from dllm.core.schedules import CosineSchedule, LinearSchedule
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_llama_config

MASK, V = 4, 16
# The mask token's logit is removed (SUBS), so uniform logits spread over the other V - 1 tokens.
COST = math.log(V - 1)


class UniformLogits(torch.nn.Module):
    """Equal logits everywhere, with a decoder's call signature; counts the rows it is fed."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.rows = 0

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0, **kwargs):
        self.rows += len(input_ids)
        return SimpleNamespace(logits=torch.zeros(len(input_ids), len(logits_to_keep), V))


def random_pairs(n: int, seed: int = 0, answer_lengths=(1, 12)):
    """``n`` (prompt, answer) pairs of varied lengths over tokens 5..V-1 (never the mask token)."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        p = int(torch.randint(0, 6, (1,), generator=g))
        a = int(torch.randint(answer_lengths[0], answer_lengths[1] + 1, (1,), generator=g))
        pairs.append((torch.randint(5, V, (p,), generator=g).tolist(), torch.randint(5, V, (a,), generator=g).tolist()))
    return [p for p, _ in pairs], [a for _, a in pairs]


def test_time_estimator_is_unbiased_for_the_linear_schedule():
    """E_t[(1/t) Binomial(L, t)] = L for t ~ U[eps, 1], so each example's bound has mean L log(V - 1)."""
    prompts, answers = random_pairs(300)
    est = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=32, seed=1)
    lengths = est.num_tokens.double()
    error = est.nll - lengths * COST  # [N], each with mean 0
    sem = error.std() / math.sqrt(len(error))
    assert abs(error.mean()) < 4 * sem
    assert abs(est.nll.sum() / (lengths.sum() * COST) - 1) < 0.02  # and tight in absolute terms
    assert torch.allclose(est.nll_per_token, est.nll / lengths)


def test_count_estimator_is_exact_for_a_uniform_model():
    """(L / l) * l masked tokens * log(V - 1) = L log(V - 1) for every draw: no Monte-Carlo error at all."""
    prompts, answers = random_pairs(50)
    est = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=8, estimator="count")
    assert torch.allclose(est.nll, est.num_tokens.double() * COST, rtol=1e-6)
    assert torch.allclose(est.stderr, torch.zeros_like(est.stderr), atol=1e-5)


def test_the_schedule_sets_both_the_masking_rate_and_the_weight():
    """With the cosine schedule, E[w(t) (1 - alpha(t))] = E[-alpha'(t)] = alpha(eps) / (1 - eps) over U[eps, 1]."""
    eps = 0.05
    prompts, answers = random_pairs(300, seed=3)
    est = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=32, schedule=CosineSchedule(), eps=eps)
    factor = math.cos(math.pi * eps / 2) / (1 - eps)  # 1.0497: measurably above 1
    error = est.nll - est.num_tokens.double() * COST * factor
    assert abs(error.mean()) < 4 * error.std() / math.sqrt(len(error))
    linear = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=32, eps=eps)
    assert abs((linear.nll - linear.num_tokens.double() * COST).mean()) < 4 * linear.nll.std() / math.sqrt(300)


def test_reported_standard_error_matches_the_spread_of_independent_draws():
    """With independent times the reported error is the real one: across 400 examples with the same expected bound,
    the estimates scatter by the root-mean-square of their reported errors. With antithetic times the error is
    computed as if the draws were independent, which never understates it (here, where the bound's mean does not
    depend on t, stratifying t removes nothing and the two agree)."""
    answers = [torch.randint(5, V, (8,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(400)]
    prompts = [[5]] * 400
    independent = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=16, eps=0.1, antithetic=False)
    ratio = independent.nll.std() / independent.stderr.pow(2).mean().sqrt()
    assert 0.8 < ratio < 1.25, ratio
    antithetic = elbo_nll(UniformLogits(), prompts, answers, MASK, num_samples=16, eps=0.1)
    assert antithetic.nll.std() / antithetic.stderr.pow(2).mean().sqrt() < 1.25


def test_draws_that_mask_nothing_cost_no_forward_and_empty_answers_score_zero():
    model = UniformLogits()
    est = elbo_nll(model, [[5, 6], [7]], [[8] * 3, []], MASK, num_samples=64, eps=1e-3)
    assert model.rows == est.forward_rows < 64  # some small t masked nothing out of 3 tokens
    assert est.nll[1] == 0 and est.nll_per_token[1] == 0 and est.num_tokens.tolist() == [3, 0]


def test_count_draws_are_stratified_and_mask_exactly_l_tokens():
    answer = torch.arange(5, 15)  # L = 10
    noisy, masked, weight = draw_noise(answer, 10, MASK, estimator="count", generator=torch.Generator().manual_seed(0))
    counts = masked.sum(dim=1)
    assert sorted(counts.tolist()) == list(range(1, 11))  # antithetic: one draw per count
    assert torch.allclose(weight, 10 / counts.float())
    assert (noisy[masked] == MASK).all()
    assert torch.equal(noisy[~masked], answer.expand(10, 10)[~masked])


@pytest.mark.parametrize("kwargs, message", [
    (dict(estimator="tokens"), "unknown estimator"),
    (dict(padding_side="middle"), "padding_side"),
    (dict(num_samples=0), "at least 1"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        elbo_nll(UniformLogits(), [[5]], [[6]], MASK, **kwargs)
    with pytest.raises(ValueError, match="pair up"):
        elbo_nll(UniformLogits(), [[5], [6]], [[6]], MASK)


# ---- a tiny real model ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    Llama3ForMaskedLM(tiny_llama_config(vocab_size=V * 4, initializer_range=0.3)).save_pretrained(path)
    return Llama3ForMaskedLM.from_pretrained(path, attn_implementation="sdpa").eval()


PROMPTS = [[1, 20, 31, 42], [1, 50], [], [1, 9, 10, 11, 12, 13, 14]]
ANSWERS = [[7, 8, 9], [33, 34, 35, 36, 37, 38], [40, 41], [5]]


def test_real_model_is_finite_reproducible_and_seeded(tiny_model):
    first = elbo_nll(tiny_model, PROMPTS, ANSWERS, MASK, num_samples=8, seed=3)
    again = elbo_nll(tiny_model, PROMPTS, ANSWERS, MASK, num_samples=8, seed=3)
    other = elbo_nll(tiny_model, PROMPTS, ANSWERS, MASK, num_samples=8, seed=4)
    assert torch.isfinite(first.nll).all() and (first.nll > 0).all() and torch.isfinite(first.stderr).all()
    assert torch.equal(first.samples, again.samples)
    assert not torch.allclose(first.nll, other.nll)


@pytest.mark.parametrize("estimator", ["time", "count"])
def test_real_model_estimate_does_not_depend_on_batching_padding_or_order(tiny_model, estimator):
    reference = elbo_nll(tiny_model, PROMPTS, ANSWERS, MASK, num_samples=6, estimator=estimator, batch_size=64)
    for kwargs in (dict(batch_size=1), dict(batch_size=5, padding_side="right"), dict(batch_size=3)):
        other = elbo_nll(tiny_model, PROMPTS, ANSWERS, MASK, num_samples=6, estimator=estimator, **kwargs)
        assert torch.allclose(other.samples, reference.samples, rtol=1e-4, atol=1e-5), kwargs
    alone = elbo_nll(tiny_model, PROMPTS[1:2], ANSWERS[1:2], MASK, num_samples=6, estimator=estimator)
    reversed_ = elbo_nll(tiny_model, PROMPTS[::-1], ANSWERS[::-1], MASK, num_samples=6, estimator=estimator)
    assert torch.allclose(alone.samples[0], reference.samples[1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(reversed_.samples.flip(0), reference.samples, rtol=1e-4, atol=1e-5)


def test_training_toward_an_answer_lowers_its_bound(tmp_path):
    """Twenty steps of the MDLM loss on one (prompt, answer) pair: its bound falls far below where it started and
    below the bound of another answer to the same prompt."""
    torch.manual_seed(0)
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=V * 4))
    prompt, target, other = [1, 20, 31], [40, 41, 42, 43], [50, 51, 52, 53]
    ids = torch.tensor([prompt + target] * 16)  # [B, L]
    labels = torch.tensor([[-100] * len(prompt) + target] * 16)
    score = lambda answer: float(elbo_nll(model.eval(), [prompt], [answer], MASK, num_samples=16).nll[0])
    before = score(target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        model.train()
        t = sample_t(len(ids), generator=g)
        noisy, masked = mask_tokens(ids, labels, t, MASK, generator=g)
        loss = masked_diffusion_loss(model(input_ids=noisy).logits, labels, masked, LinearSchedule().weight(t))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score(target)
    assert after < 0.5 * before and after < score(other)


def test_block_diffusion_bound_reads_the_clean_copy_as_it_was_trained():
    """A block-diffusion model's masked cross-entropy runs its training forward (x_t beside x_0): with both answer
    tokens masked and in different blocks, the second is predicted from the first's clean token, so the sum equals
    the chain -log p(a | prompt) - log p(b | prompt, a) of the model's plain block-causal forward on prompt + [MASK]
    and prompt + [a, MASK] (an independent path). A pass over x_t alone would predict b from a masked a."""
    from transformers import LlamaForCausalLM

    from dllm.core.likelihood import masked_cross_entropy
    from dllm.core.models import masked_lm_class
    from dllm.core.models.masked_lm import set_block_diffusion
    from tests.helpers import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=40, mask_token_id=39)
    config._attn_implementation = "sdpa"
    model = masked_lm_class(LlamaForCausalLM)(config).double().eval()
    set_block_diffusion(model.config, 2)  # prompt [3, 5 | 7, a | b]: a and b lie in different blocks
    prompt, a, b = [3, 5, 7], 11, 13

    def log_probs(sequence: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([sequence])).logits[0, -1].double()
        logits[39] = float("-inf")  # SUBS, as the estimator does
        return torch.log_softmax(logits, dim=-1)

    chain = -(log_probs(prompt + [39])[a] + log_probs(prompt + [a, 39])[b])
    row = torch.tensor(prompt + [39, 39])
    labels = torch.tensor([-100, -100, -100, a, b])
    ce = masked_cross_entropy(model, [row], [labels], 39)
    torch.testing.assert_close(ce[0].double(), chain, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the x_t-only pass differs: b's context holds a mask where a should be
        naive = model(input_ids=row[None]).logits[0, -1].double()
    naive[39] = float("-inf")
    assert abs(float(-(log_probs(prompt + [39])[a] + torch.log_softmax(naive, -1)[b]) - chain)) > 1e-4
