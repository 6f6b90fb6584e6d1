from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.evals import bootstrap_interval, pass_at_k, pass_hat_k, wilson_lower_bound


@pytest.mark.parametrize(
    ("n", "c", "k", "at_k", "hat_k"),
    [
        # hand-computed: C(c,k)/C(n,k) and 1 - C(n-c,k)/C(n,k)
        (5, 3, 1, 3 / 5, 3 / 5),
        (5, 3, 2, 1 - 1 / 10, 3 / 10),  # C(2,2)=1, C(5,2)=10, C(3,2)=3
        (5, 3, 3, 1.0, 1 / 10),  # n-c=2 < k: pass@3 certain; C(3,3)/C(5,3) = 1/10
        (10, 7, 4, 1 - 0 / 210, 35 / 210),  # C(3,4)=0 ; C(7,4)=35, C(10,4)=210
        (8, 0, 3, 0.0, 0.0),
        (8, 8, 8, 1.0, 1.0),
        (4, 2, 2, 1 - 1 / 6, 1 / 6),
    ],
)
def test_estimators_match_hand_computed_values(n: int, c: int, k: int, at_k: float, hat_k: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(at_k)
    assert pass_hat_k(n, c, k) == pytest.approx(hat_k)


def test_wilson_lower_bound_hand_computed() -> None:
    # p=0.8, n=10, z=1.96: (0.8 + 0.19208 - 1.96*sqrt(0.016 + 0.009604)) / 1.38416 = 0.4902
    assert wilson_lower_bound(8, 10) == pytest.approx(0.4902, abs=1e-4)
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 5) == pytest.approx(0.0, abs=1e-12)
    assert wilson_lower_bound(100, 100) == pytest.approx(0.9630, abs=1e-4)


def test_bad_arguments_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="run each case at least k times"):
        pass_hat_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_lower_bound(6, 5)


@given(st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_hat_k_never_exceeds_pass_at_k_and_both_are_probabilities(args: tuple[int, int, int]) -> None:
    n, c, k = args
    hat, at = pass_hat_k(n, c, k), pass_at_k(n, c, k)
    assert 0.0 <= hat <= at <= 1.0
    if k == 1:
        assert math.isclose(hat, c / n) and math.isclose(at, c / n)


def test_bootstrap_interval_against_the_exact_resampling_distribution() -> None:
    # values [0, 0, 1]: a resample's mean is j/3 with j ~ Binomial(3, 1/3):
    # P(0) = 8/27 = 0.296 > 2.5 %, so the lower end is 0; P(mean < 1) = 26/27 = 0.963 < 97.5 %,
    # so the upper end is 1.
    assert bootstrap_interval([0.0, 0.0, 1.0]) == (0.0, 1.0)
    # values [0, 1] x 50: the mean of 100 resampled values has sd 0.05: the 95 % interval is
    # about 0.5 +- 1.96 * 0.05
    lo, hi = bootstrap_interval([0.0, 1.0] * 50)
    assert lo == pytest.approx(0.402, abs=0.03) and hi == pytest.approx(0.598, abs=0.03)
    assert bootstrap_interval([0.7] * 5) == (0.7, 0.7)
    assert bootstrap_interval([]) == (0.0, 0.0)
    assert bootstrap_interval([0.1, 0.9], seed=1) == bootstrap_interval([0.1, 0.9], seed=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        bootstrap_interval([1.0], confidence=95)
