import math

import pytest
import torch

from dllm.core.diffusion import count_loss_items, mask_tokens, masked_diffusion_loss, sample_t


def test_sample_t_range_and_antithetic_stratification():
    g = torch.Generator().manual_seed(0)
    t = sample_t(8, eps=0.1, antithetic=True, generator=g)
    assert t.shape == (8,) and (t >= 0.1).all() and (t <= 1.0).all()
    # Antithetic: exactly one draw in each of the B strata of [eps, 1].
    strata = ((t - 0.1) / 0.9 * 8).floor().long()
    assert sorted(strata.tolist()) == list(range(8))


def test_sample_t_uniform_mean():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, eps=0.0, antithetic=False, generator=g)
    assert abs(t.mean().item() - 0.5) < 0.01


def test_sample_t_eps_one_is_deterministic():
    assert torch.equal(sample_t(4, eps=1.0), torch.ones(4))


def test_mask_tokens_never_masks_ignored_labels_and_fraction_matches():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (64, 200), generator=g)
    labels = ids.clone()
    labels[:, :50] = -100  # prompt
    mask_prob = torch.full((64,), 0.3)
    noisy, masked = mask_tokens(ids, labels, mask_prob, mask_token_id=4, generator=g)
    assert not masked[:, :50].any()
    assert torch.equal(noisy[:, :50], ids[:, :50])
    assert (noisy[masked] == 4).all() and torch.equal(noisy[~masked], ids[~masked])
    frac = masked[:, 50:].float().mean().item()
    assert abs(frac - 0.3) < 0.01  # masked fraction ~= 1 - alpha(t)


def test_uniform_logits_give_log_v():
    V = 37
    labels = torch.randint(0, V, (4, 10))
    labels[:, :3] = -100
    masked = labels != -100  # everything maskable is masked (t = 1, weight 1)
    loss = masked_diffusion_loss(torch.zeros(4, 10, V), labels, masked, torch.ones(4))
    assert math.isclose(loss.item(), math.log(V), rel_tol=1e-6)


def test_expected_token_loss_is_log_v_under_random_masking():
    """E_t E_mask [w(t) * sum_masked CE / N] = log V for uniform logits, linear schedule (unbiasedness)."""
    V, B, L = 11, 4096, 16
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, V, (B, L), generator=g)
    t = sample_t(B, eps=1e-3, antithetic=True, generator=g)
    _, masked = mask_tokens(labels, labels, t, mask_token_id=0, generator=g)
    loss = masked_diffusion_loss(torch.zeros(B, L, V), labels, masked, 1 / t)
    assert abs(loss.item() / math.log(V) - 1) < 0.03


def test_loss_closed_form_with_weights_and_normalizations():
    V = 5
    logits = torch.zeros(2, 4, V)
    logits[0, 1, 2] = 10.0  # position (0,1) predicts token 2 confidently
    labels = torch.tensor([[-100, 2, 3, -100], [1, 1, 1, 1]])
    masked = torch.tensor([[False, True, True, False], [True, False, False, False]])
    weight = torch.tensor([2.0, 3.0])
    ce_confident = -torch.log_softmax(logits[0, 1], -1)[2].item()
    ce_uniform = math.log(V)
    seq0 = 2.0 * (ce_confident + ce_uniform)
    seq1 = 3.0 * ce_uniform
    token = masked_diffusion_loss(logits, labels, masked, weight, normalization="token")
    assert math.isclose(token.item(), (seq0 + seq1) / 6, rel_tol=1e-6)  # 2 + 4 maskable tokens
    seq = masked_diffusion_loss(logits, labels, masked, weight, normalization="sequence")
    assert math.isclose(seq.item(), (seq0 / 2 + seq1 / 4) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="unknown loss normalization"):
        masked_diffusion_loss(logits, labels, masked, weight, normalization="bogus")


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_accumulated_halves_equal_full_batch(normalization):
    """Summing micro-batch losses normalised by the window count equals the full-batch loss."""
    g = torch.Generator().manual_seed(0)
    V = 13
    logits = torch.randn(8, 6, V, generator=g)
    labels = torch.randint(0, V, (8, 6), generator=g)
    labels[torch.rand(8, 6, generator=g) < 0.4] = -100  # ragged answers
    masked = (torch.rand(8, 6, generator=g) < 0.5) & (labels != -100)
    weight = torch.rand(8, generator=g) + 0.5
    full = masked_diffusion_loss(logits, labels, masked, weight, normalization=normalization)
    n = count_loss_items(labels, normalization)
    halves = sum(
        masked_diffusion_loss(logits[s], labels[s], masked[s], weight[s], normalization=normalization, num_items=n)
        for s in (slice(0, 4), slice(4, 8))
    )
    assert torch.allclose(full, halves, rtol=1e-6)


def test_count_loss_items_is_the_default_normaliser():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, -100, -100], [1, 2, 3, 4]])
    assert count_loss_items(labels, "token").item() == 6
    assert count_loss_items(labels, "sequence").item() == 2  # the all-ignored row counts for nothing
    with pytest.raises(ValueError, match="unknown loss normalization 'bogus'"):
        count_loss_items(labels, "bogus")


def test_no_answer_tokens_gives_zero_not_nan():
    labels = torch.full((2, 3), -100)
    masked = torch.zeros(2, 3, dtype=torch.bool)
    for normalization in ("token", "sequence"):
        loss = masked_diffusion_loss(torch.randn(2, 3, 7), labels, masked, torch.ones(2), normalization=normalization)
        assert loss.item() == 0.0
