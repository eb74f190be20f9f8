"""Band coverage: the share of closes inside p10-p90, and Kupiec's test of whether it is the 80% it claims."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

EXPECTED_BAND_FAIL_RATE = 0.2
"""Share of realised closes expected outside a calibrated p10-p90 band (10% in each tail)."""

COVERAGE_ALARM_ALPHA = 0.01
"""Kupiec p-value below which the coverage alarm fires.

Kupiec's test assumes independent observations; band failures of
overlapping horizons and of correlated instruments are not independent, which
makes the test reject too often. A 1% level rather than 5% keeps the false
alarms from that down.
"""

COVERAGE_ALARM_MIN_OBS = 100
"""Fewest band observations before the coverage alarm may fire.

Kupiec's test has little power on small samples: with 100 observations at an
expected 20% failure rate it rejects (at 1%) only at 10 or fewer or at 31 or
more failures. The chance that it catches a band that really fails 25% of the
time is about 10% at 100 observations, 32% at 300, 56% at 500 and 89% at
1000. Below 100 the alarm reports its statistics but does not fire.
"""


@dataclass(frozen=True)
class CoverageAlarm:
    """Outcome of a Kupiec test of band coverage.

    Attributes
    ----------
    fired
        True when there are at least ``min_obs`` observations and the p-value is below ``alpha``.
    enough_data
        False when ``n_obs < min_obs``; the statistics are still reported.
    n_obs, n_fail
        Observations and band failures (realised close outside p10-p90).
    observed_rate, expected_rate
        ``n_fail / n_obs`` and the rate a calibrated band would have.
    lr_statistic, p_value
        Kupiec's likelihood ratio (chi-square with one degree of freedom) and its p-value.
    """

    fired: bool
    enough_data: bool
    n_obs: int
    n_fail: int
    observed_rate: float
    expected_rate: float
    lr_statistic: float
    p_value: float


def band_rates(n: str = "n", below: str = "n_below_p10", above: str = "n_above_p90") -> list[pl.Expr]:
    """``coverage_p10_p90``, ``below_p10_rate`` and ``above_p90_rate`` from counts of observations and tail hits.

    The one coverage formula of the package: the score table, the summary and the rolling
    series all take their rates from here. Null where the counts are null (central forecasts).
    """
    total = pl.col(n).cast(pl.Float64)
    return [
        ((total - pl.col(below) - pl.col(above)) / total).alias("coverage_p10_p90"),
        (pl.col(below) / total).alias("below_p10_rate"),
        (pl.col(above) / total).alias("above_p90_rate"),
    ]


def _xlogy(x: float, y: float) -> float:
    # x*log(y) with 0*log(0) = 0, the limit the likelihood needs at 0 or all failures.
    return 0.0 if x == 0 else x * math.log(y)


def kupiec_pof(n_obs: int, n_fail: int, expected_rate: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures likelihood-ratio test.

    Parameters
    ----------
    n_obs
        Number of observations (>= 1).
    n_fail
        Number of failures, 0..n_obs (for the 80% band: realised close outside p10-p90).
    expected_rate
        Failure probability under the null, in (0, 1); 0.2 for the 80% band.

    Returns
    -------
    tuple[float, float]
        ``(lr, p_value)``: LR = -2 ln[L(expected_rate) / L(n_fail / n_obs)], chi-square with one
        degree of freedom under the null, and its survival function ``erfc(sqrt(lr / 2))``. Zero
        failures or all failures are handled with 0 * log(0) = 0.
    """
    if n_obs < 1:
        raise ValueError(f"n_obs must be at least 1, got {n_obs}")
    if not 0 <= n_fail <= n_obs:
        raise ValueError(f"n_fail must lie in 0..n_obs={n_obs}, got {n_fail}")
    if not 0.0 < expected_rate < 1.0:
        raise ValueError(f"expected_rate must lie strictly between 0 and 1, got {expected_rate}")
    n_pass = n_obs - n_fail
    observed = n_fail / n_obs
    log_null = _xlogy(n_pass, 1.0 - expected_rate) + _xlogy(n_fail, expected_rate)
    log_alt = _xlogy(n_pass, 1.0 - observed) + _xlogy(n_fail, observed)
    # Rounding can leave a hair below zero when observed == expected.
    lr = max(0.0, -2.0 * (log_null - log_alt))
    return lr, math.erfc(math.sqrt(lr / 2.0))


def coverage_alarm(
    n_obs: int,
    n_fail: int,
    expected_rate: float = EXPECTED_BAND_FAIL_RATE,
    alpha: float = COVERAGE_ALARM_ALPHA,
    min_obs: int = COVERAGE_ALARM_MIN_OBS,
) -> CoverageAlarm:
    """Kupiec test of band failures, firing only with at least ``min_obs`` observations and p below ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if min_obs < 1:
        raise ValueError(f"min_obs must be at least 1, got {min_obs}")
    lr, p_value = kupiec_pof(n_obs, n_fail, expected_rate)
    enough = n_obs >= min_obs
    return CoverageAlarm(
        fired=enough and p_value < alpha,
        enough_data=enough,
        n_obs=n_obs,
        n_fail=n_fail,
        observed_rate=n_fail / n_obs,
        expected_rate=expected_rate,
        lr_statistic=lr,
        p_value=p_value,
    )
