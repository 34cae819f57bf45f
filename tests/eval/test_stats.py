"""The intervals and pass@k against slow, obviously correct references: Wilson's interval as the set of
proportions a score test accepts, pass@k as exact binomial-coefficient arithmetic and as the chance that a random
k-subset holds a correct sample, the bootstrap against its definition."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from dllm.eval.stats import Z_95, bootstrap_interval, pass_at_k, wilson_interval


@pytest.mark.parametrize("successes, n", [(0, 10), (3, 10), (10, 10), (57, 200), (1, 1)])
def test_wilson_interval_is_the_set_the_score_test_accepts(successes, n):
    low, high = wilson_interval(successes, n)
    accepted = [p0 / 20000 for p0 in range(20001)
                if abs(successes / n - p0 / 20000) <= Z_95 * math.sqrt(p0 / 20000 * (1 - p0 / 20000) / n)]
    assert low == pytest.approx(min(accepted), abs=1e-4) and high == pytest.approx(max(accepted), abs=1e-4)
    assert 0 <= low <= successes / n <= high <= 1


def test_wilson_interval_of_nothing_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (10, 0, 3), (10, 8, 3), (200, 13, 100), (5, 5, 5)])
def test_pass_at_k_is_the_exact_combinatorial_formula(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_is_the_chance_a_k_subset_holds_a_correct_sample():
    samples = [True, False, False, True, False, False]
    for k in range(1, len(samples) + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(6, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(6, 2, 1) == pytest.approx(2 / 6)


def test_pass_at_k_is_stable_where_the_coefficients_overflow_floats():
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)  # C(2000, 1000) has 600 digits
    assert pass_at_k(3000, 2, 1500) == pytest.approx(1 - 1499 * 1500 / (3000 * 2999))
    with pytest.raises(ValueError, match="k=11"):
        pass_at_k(10, 2, 11)


def test_bootstrap_interval_follows_its_definition():
    source = random.Random(0)
    values = [source.random() for _ in range(30)]
    low, high = bootstrap_interval(values, seed=1, resamples=500)
    rng = random.Random(1)
    means = sorted(sum(rng.choices(values, k=30)) / 30 for _ in range(500))
    assert (low, high) == (means[12], means[487])  # quantiles 0.025 and 0.975 of 500 sorted means
    assert low < sum(values) / 30 < high
    assert bootstrap_interval([1.0] * 5) == (1.0, 1.0) and bootstrap_interval([]) == (0.0, 1.0)
