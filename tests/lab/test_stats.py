"""The statistics on known numbers: Holm, TOST, power, the sequential level, the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from adaptim.lab import stats


def test_paired_difference_matches_scipy_and_handles_constant_gaps() -> None:
    x, y = [0.90, 0.91, 0.89, 0.95], [0.88, 0.90, 0.86, 0.90]
    d = stats.paired_difference(x, y)
    assert d.mean == pytest.approx(0.0275)
    assert d.p_value == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue)
    assert d.low is not None and d.high is not None and d.low < d.mean < d.high
    constant = stats.paired_difference([1.0, 2.0], [0.5, 1.5])
    assert (constant.p_value, constant.low, constant.high) == (0.0, 0.5, 0.5)
    assert stats.paired_difference([1.0], [0.0]).p_value is None


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.001, 0.9]) == pytest.approx([0.002, 0.9])


def test_tost_agrees_with_the_90_percent_interval() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(0.0, 1.0, 6)
        y = x + rng.normal(0.1, 0.2, 6)
        d = stats.paired_difference(y, x)
        ninety = stats.paired_difference(y, x, confidence=0.90)
        assert ninety.low is not None and ninety.high is not None
        inside = ninety.low > -0.3 and ninety.high < 0.3
        p = stats.equivalence_p(d, 0.3)
        assert p is not None and (p <= 0.05) == inside


def test_seeds_to_separate_from_power_of_the_paired_t_test() -> None:
    # A gap of one paired SD: 10 seeds give 80% power at the 5% level (two-sided).
    assert stats.seeds_to_separate(1.0, 1.0) == 10
    assert stats.seeds_to_separate(-0.5, 1.0) == 34
    assert stats.seeds_to_separate(0.0, 1.0) is None
    assert stats.seeds_to_separate(1e-6, 1.0) is None  # more than 1000


def test_sequential_level_keeps_false_separations_at_five_percent() -> None:
    assert stats.sequential_level(3, 3) == 0.05
    level = stats.sequential_level(3, 10)
    assert 0.005 < level < 0.05
    # An independent simulation: seeds 3..10, stop at the first separation at `level`.
    rng = np.random.default_rng(123)
    d = rng.standard_normal((4000, 10))
    separated = np.zeros(4000, dtype=bool)
    for n in range(3, 11):
        p = scipy_stats.ttest_1samp(d[:, :n], 0.0, axis=1).pvalue
        separated |= p <= level
    assert separated.mean() == pytest.approx(0.05, abs=0.012)


def test_probability_of_improvement_and_its_bootstrap_interval() -> None:
    same = stats.probability_of_improvement([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
    assert same.probability == 0.5 and same.low < 0.5 < same.high
    better = stats.probability_of_improvement([[5.0, 6.0], [1.0]], [[1.0, 2.0], [0.0]])
    assert (better.probability, better.low, better.high) == (1.0, 1.0, 1.0)
    low, high = stats.stratified_bootstrap_ci([[1.0, 2.0, 3.0, 4.0]], lambda a: a[0].mean())
    assert 1.0 <= low < 2.5 < high <= 4.0
