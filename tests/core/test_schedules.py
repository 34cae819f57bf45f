import math

import pytest
import torch

from dllm.core.schedules import (
    SCHEDULES,
    CosineSchedule,
    LinearSchedule,
    MaskingSchedule,
    PolynomialSchedule,
    describe_schedules,
    make_schedule,
)

INSTANCES = [LinearSchedule(), CosineSchedule(), PolynomialSchedule(0.5), PolynomialSchedule(2.0)]


@pytest.mark.parametrize("schedule", INSTANCES, ids=lambda s: f"{s.name}-{getattr(s, 'power', '')}")
def test_endpoints_and_monotone(schedule):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(schedule.alpha(t), torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12)
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert (schedule.alpha(grid).diff() < 0).all()  # alpha strictly decreasing: more masking over time


@pytest.mark.parametrize("schedule", INSTANCES, ids=lambda s: f"{s.name}-{getattr(s, 'power', '')}")
def test_alpha_prime_matches_autograd(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(schedule.alpha(t).sum(), t)
    assert torch.allclose(schedule.alpha_prime(t.detach()), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", INSTANCES, ids=lambda s: f"{s.name}-{getattr(s, 'power', '')}")
def test_weight_is_elbo_ratio(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    expected = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
    assert torch.allclose(schedule.weight(t), expected, rtol=1e-9)


def test_linear_weight_is_one_over_t_and_mask_probability_is_t():
    t = torch.tensor([0.1, 0.5, 1.0])
    assert torch.allclose(LinearSchedule().weight(t), 1 / t)
    assert torch.allclose(LinearSchedule().mask_probability(t), t)


def test_cosine_weight_near_zero_behaves_like_two_over_t():
    t = torch.tensor([1e-4], dtype=torch.float64)
    assert math.isclose(CosineSchedule().weight(t).item() * t.item(), 2.0, rel_tol=1e-6)


def test_make_schedule_names():
    assert isinstance(make_schedule("linear"), LinearSchedule)
    assert isinstance(make_schedule("cosine"), CosineSchedule)
    assert make_schedule("sqrt").power == 0.5
    assert make_schedule("polynomial").power == 1.0
    assert make_schedule("polynomial", power=3.0).power == 3.0
    with pytest.raises(ValueError, match="unknown masking schedule 'nope'; choose one of linear, cosine, polynomial"):
        make_schedule("nope")
    with pytest.raises(ValueError, match="power > 0"):
        PolynomialSchedule(0.0)
    with pytest.raises(ValueError, match="power > 0"):
        make_schedule("polynomial", power=-1.0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_listed_schedule_builds_and_is_described(name):
    assert isinstance(make_schedule(name), MaskingSchedule)
    assert f"{name}: alpha(t) = {SCHEDULES[name].formula}" in describe_schedules()


@pytest.mark.parametrize("name", ["linear", "cosine", "sqrt"])
def test_a_power_for_a_schedule_without_one_is_an_error(name):
    with pytest.raises(ValueError, match=f"schedule_power=1.0 was given with schedule '{name}'.*polynomial"):
        make_schedule(name, power=1.0)
