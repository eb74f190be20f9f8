"""The Diebold-Mariano test of the promotion check, against independent formulations of the same quantities."""

import numpy as np
import pytest
from scipy import stats

from forecasting_pipeline.scoring.diebold_mariano import diebold_mariano, newey_west_variance


def test_when_the_horizon_is_one_step_then_the_test_equals_a_one_sided_t_test_of_the_differences():
    rng = np.random.default_rng(3)
    champion = rng.gamma(2.0, 1.0, 80)
    challenger = champion - 0.1 + rng.normal(0, 0.5, 80)

    result = diebold_mariano(challenger, champion, horizon=1)

    # With no lags and HLN's factor sqrt((T - 1) / T), the statistic is the t statistic of d exactly.
    t = stats.ttest_1samp(challenger - champion, 0.0, alternative="less")
    assert result.statistic == pytest.approx(t.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(t.pvalue, rel=1e-10)
    assert (result.n, result.lags) == (80, 0)


def test_when_losses_overlap_over_a_horizon_then_the_variance_is_the_bartlett_weighted_quadratic_form():
    rng = np.random.default_rng(5)
    d = np.convolve(rng.normal(size=60), np.ones(4), mode="valid")  # MA(3): what 4-step forecasts give
    lags = 3

    # The same long-run variance written as a quadratic form: (1/T) sum_ij w(|i-j|) e_i e_j.
    e = d - d.mean()
    gaps = np.abs(np.subtract.outer(np.arange(len(d)), np.arange(len(d))))
    weights = np.clip(1 - gaps / (lags + 1), 0, None)
    assert newey_west_variance(d, lags) == pytest.approx(e @ weights @ e / len(d), rel=1e-12)


def test_when_the_challenger_is_no_better_then_the_one_sided_p_value_is_large():
    rng = np.random.default_rng(11)
    champion = rng.gamma(2.0, 1.0, 200)

    worse = diebold_mariano(champion + 0.3 + rng.normal(0, 0.2, 200), champion, horizon=10)

    assert worse.mean_difference > 0 and worse.p_value > 0.95


@pytest.mark.parametrize(
    ("challenger", "champion", "horizon", "message"),
    [
        (np.ones(5), np.ones(6), 1, "one length"),
        (np.array([1.0, np.nan, 2.0]), np.ones(3), 1, "finite"),
        (np.ones(10), np.ones(10), 10, "10 origins are too few for a 10-step test"),
    ],
)
def test_when_the_losses_cannot_be_tested_then_it_says_why(challenger, champion, horizon, message):
    with pytest.raises(ValueError, match=message):
        diebold_mariano(challenger, champion, horizon)
