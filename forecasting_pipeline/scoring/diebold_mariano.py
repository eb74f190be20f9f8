"""The Diebold–Mariano test of equal predictive accuracy, for multi-step forecasts.

Two forecasters are compared on the same origins through the loss differential
``d_t = L_challenger(t) - L_champion(t)``. Forecasts ``h`` steps ahead made from consecutive origins
share up to ``h - 1`` realised values, so ``d_t`` is autocorrelated up to lag ``h - 1`` even when
both forecasts are optimal (Diebold & Mariano 1995). The variance of its mean is therefore a
heteroskedasticity-and-autocorrelation-consistent (HAC) one: Newey & West's (1987) Bartlett
weights up to lag ``h - 1``, which, unlike the rectangular window of the original paper, is never
negative. The statistic gets Harvey, Leybourne & Newbold's (1997) small-sample factor and is read
against Student's t with ``T - 1`` degrees of freedom, as they recommend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DieboldMariano:
    """One test's result.

    Attributes
    ----------
    mean_difference
        Mean of ``d_t`` (challenger minus champion): negative when the challenger's loss is lower.
    statistic
        The HLN-corrected DM statistic.
    p_value
        One-sided: the probability of a statistic this low if the challenger were not better.
    n, lags
        Origins in the series, and autocovariance lags in the variance (``horizon - 1``).
    """

    mean_difference: float
    statistic: float
    p_value: float
    n: int
    lags: int


def newey_west_variance(d: np.ndarray, lags: int) -> float:
    """Long-run variance of ``d`` (not of its mean): ``gamma_0 + 2 * sum_k (1 - k / (lags + 1)) * gamma_k``.

    Autocovariances ``gamma_k`` divide by ``n``, as Newey and West's estimator does.
    """
    n = len(d)
    centred = d - d.mean()
    variance = float(centred @ centred) / n
    for k in range(1, min(lags, n - 1) + 1):
        variance += 2.0 * (1.0 - k / (lags + 1)) * float(centred[k:] @ centred[:-k]) / n
    return variance


def diebold_mariano(challenger: np.ndarray, champion: np.ndarray, horizon: int) -> DieboldMariano:
    """Test whether ``challenger``'s losses are lower than ``champion``'s (one-sided, HLN-corrected).

    Parameters
    ----------
    challenger, champion
        Losses at the same origins, in time order, shape (T,).
    horizon
        Steps ahead each loss covers (the forecasts' horizon): the variance takes ``horizon - 1`` lags.

    Raises
    ------
    ValueError
        If the series differ in shape, hold a non-finite value, or are too short for the lags
        (``T`` must exceed ``horizon``).
    """
    from scipy import stats

    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"losses must be two 1-d series of one length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("losses must be finite")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    n = len(a)
    if n <= horizon:
        raise ValueError(f"{n} origins are too few for a {horizon}-step test: more than {horizon} are needed")
    d = a - b
    lags = horizon - 1
    mean = float(d.mean())
    variance = newey_west_variance(d, lags)
    if variance <= 0.0:
        # Identical losses at every origin (or a constant difference): no evidence either way
        # unless the difference is itself not zero.
        statistic = 0.0 if mean == 0.0 else float(np.copysign(np.inf, mean))
    else:
        correction = np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
        statistic = float(correction * mean / np.sqrt(variance / n))
    p_value = float(stats.t.cdf(statistic, df=n - 1))
    return DieboldMariano(mean, statistic, p_value, n, lags)
