"""Scoring of price forecasts against realised closes, and the canaries built on those scores.

This module owns:

* the two reference forecasts every model must beat: the random walk (last
  close as the median) and the random walk with historical-volatility
  quantiles (``baseline-random-walk`` and ``baseline-rw-vol``);
* matching forecasts to realised closes, point-in-time (nothing after a
  forecast's ``as_of`` is used to scale or to build a baseline);
* scale-free scores per model, symbol and step: pinball loss at the 0.1, 0.5
  and 0.9 levels, their mean (a CRPS approximation), p10-p90 coverage and tail
  hit rates, and the MAE of p50 relative to the random walk;
* the Kupiec proportion-of-failures test for the 80% band;
* the regime-shift canary (a rolling loss difference between two models whose
  sign flips and stays flipped) and the coverage alarm.

Scaling
-------
Pinball losses and absolute errors are divided by the *naive scale* of the
forecast: the mean absolute one-bar change of close over the last
``vol_window`` one-bar changes ending at the bar at ``as_of`` (a MASE-style
in-sample scale; it needs ``vol_window + 1`` closes, and uses what there is,
down to ``MIN_HISTORY_CHANGES``, early in a symbol's history). A scaled loss
of 1.0 is "as large as a typical one-bar move", so losses on a 5 USD and a
50,000 USD instrument can be averaged. The same window gives ``sigma``, the
sample standard deviation of one-bar log returns, for ``baseline-rw-vol``.

All functions are plain polars/NumPy code, without Dagster.

Frames
------
Forecasts (long): ``model_name`` Utf8, ``symbol`` Utf8, ``as_of``
Datetime("us", "UTC") (close time of the last bar the forecast used),
``step`` Int32 (1..H), ``ts`` Datetime("us", "UTC") (close time of the
forecast bar), ``p10`` Float64 nullable, ``p50`` Float64, ``p90`` Float64
nullable. Central-only models have both ``p10`` and ``p90`` null.

Bars: ``symbol`` Utf8, ``ts`` Datetime("us", "UTC") (bar close time),
``close`` Float64; other columns are ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from forecasting_pipeline.forecasting.shaping import FORECAST_SCHEMA

logger = logging.getLogger(__name__)

BASELINE_RANDOM_WALK = "baseline-random-walk"
"""Model name of the persistence forecast: p50 is the last close, no band."""

BASELINE_RW_VOL = "baseline-rw-vol"
"""Model name of the random walk with a historical-volatility band."""

BASELINE_MODELS = (BASELINE_RANDOM_WALK, BASELINE_RW_VOL)

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
"""Levels scored, in the order of the columns ``p10``, ``p50``, ``p90``."""

# Standard normal quantiles of the band levels, written out rather than taken
# from statistics.NormalDist, whose inv_cdf(0.1) differs in the last digits
# (-1.2815515655446008) from the reference value used elsewhere.
_Z_P10 = -1.2815515655446004
_Z_P90 = 1.2815515655446004

DEFAULT_VOL_WINDOW = 250
"""One-bar changes behind sigma and the naive scale: about one trading year of daily bars."""

MIN_HISTORY_CHANGES = 20
"""Fewest one-bar changes from which sigma and the naive scale are computed.

A standard deviation estimated from n points has a relative standard error of
about 1/sqrt(2n): 16% at n = 20. With fewer changes the baseline band and the
scale of the losses would be mostly noise, so those forecasts are not scored
and ``baseline-rw-vol`` is not produced for them.
"""

EXPECTED_BAND_FAIL_RATE = 0.2
"""Share of realised closes expected outside a calibrated p10-p90 band (10% in each tail)."""

CANARY_WINDOW = 20
"""Forecast dates (distinct ``as_of``) in the rolling mean of the loss difference.

At each ``as_of`` the per-forecast difference is first averaged over the
symbols both models forecast, so with daily forecasts over 23 instruments the
rolling mean covers four trading weeks and up to 460 paired forecasts: long
enough that one bad day cannot move it far, short enough to follow a change of
regime within a month.
"""

CANARY_PERSIST = 5
"""Consecutive points the rolling difference must stay on the new side of the deadband.

Successive points of a rolling mean share ``CANARY_WINDOW - 1`` of their
``CANARY_WINDOW`` inputs, so a single outlier forecast date can hold the mean
on one side for a while; five consecutive dates (a trading week of daily
forecasts) beyond the deadband is what counts as a flip.
"""

CANARY_DEADBAND = 0.05
"""Smallest |rolling difference| of scaled loss that counts as a sign, in naive-scale units.

Losses are divided by the mean absolute one-bar change, so 0.05 is a
difference of 5% of a typical one-bar move. Smaller rolling differences are
treated as "no model is better": they neither establish a sign nor confirm a
flip, so noise around zero does not fire. With the default window and
persistence, simulated series of 500 forecast dates whose per-date ``diff`` is
independent noise around zero fired in none of 1000 runs at a noise standard
deviation of 0.05 (rolling-mean sd about 0.011), 0.1% at 0.07, 1% at 0.08, 9%
at 0.1 and 79% at 0.15. Keep the deadband at about five times the rolling
sd, ``5 * sd(diff) / sqrt(CANARY_WINDOW)``, and widen it if the observed
per-date sd of ``diff`` is above about 0.05.
"""

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

ROLLING_COVERAGE_WINDOW = 20
"""Forecast dates pooled into each point of the rolling coverage series (same span as ``CANARY_WINDOW``)."""

_FORECAST_COLUMNS = ("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")
_FORECAST_SCHEMA = {"model_name": pl.String, **FORECAST_SCHEMA}


@dataclass(frozen=True)
class SignFlip:
    """One confirmed change of sign of a rolling loss difference.

    Attributes
    ----------
    started_index, confirmed_index
        Positions in the input series of the first point on the new side of
        the deadband and of the point that completed ``persist`` of them.
    started_at, confirmed_at
        The ``times`` at those positions, or None when no times were given.
    from_sign, to_sign
        -1 or +1. For ``rolling_model_comparison`` output (loss of model A
        minus loss of model B), -1 to +1 means model A went from better to worse.
    value
        The rolling difference at ``confirmed_index``.
    """

    started_index: int
    confirmed_index: int
    started_at: datetime | None
    confirmed_at: datetime | None
    from_sign: int
    to_sign: int
    value: float


@dataclass(frozen=True)
class CoverageAlarm:
    """Outcome of a Kupiec test of band coverage.

    Attributes
    ----------
    fired
        True when there are at least ``min_obs`` observations and the p-value
        is below ``alpha``.
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


# ---------------------------------------------------------------------------
# Validation and point-in-time history statistics
# ---------------------------------------------------------------------------


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {frame.columns}")


def _check_vol_window(vol_window: int) -> None:
    if vol_window < MIN_HISTORY_CHANGES:
        raise ValueError(
            f"vol_window must be at least MIN_HISTORY_CHANGES={MIN_HISTORY_CHANGES} one-bar changes, got {vol_window}"
        )


def _check_forecasts(forecasts: pl.DataFrame) -> pl.DataFrame:
    _require_columns(forecasts, _FORECAST_COLUMNS, "forecasts")
    out = forecasts.select(_FORECAST_COLUMNS).cast(_FORECAST_SCHEMA)  # type: ignore[arg-type]
    n_null_p50 = out["p50"].null_count()
    if n_null_p50:
        raise ValueError(f"forecasts have {n_null_p50} rows with a null p50; every forecast row needs a median")
    n_bad_step = out.filter(pl.col("step") < 1).height
    if n_bad_step:
        raise ValueError(f"forecasts have {n_bad_step} rows with step < 1; steps count from 1")
    half_band = out.filter(pl.col("p10").is_null() != pl.col("p90").is_null()).height
    if half_band:
        raise ValueError(
            f"forecasts have {half_band} rows with only one of p10/p90; a band needs both ends or neither"
        )
    duplicated = out.select("model_name", "symbol", "as_of", "step").is_duplicated().sum()
    if duplicated:
        raise ValueError(f"forecasts have {duplicated} rows sharing (model_name, symbol, as_of, step)")
    return out


def _check_bars(bars: pl.DataFrame) -> pl.DataFrame:
    _require_columns(bars, ("symbol", "ts", "close"), "bars")
    out = bars.select("symbol", pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.col("close").cast(pl.Float64))
    duplicated = out.select("symbol", "ts").is_duplicated().sum()
    if duplicated:
        raise ValueError(f"bars have {duplicated} rows sharing (symbol, ts); one bar per symbol and close time")
    return out.sort("symbol", "ts")


def _history_stats(bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    """Per bar, the close and the trailing statistics known at its close.

    Returns columns ``symbol``, ``ts``, ``last_close``, ``sigma`` (sample std
    of the last ``vol_window`` one-bar log returns ending at this bar) and
    ``naive_scale`` (mean absolute one-bar change of close over the same
    changes); both null with fewer than ``MIN_HISTORY_CHANGES`` changes, and
    the scale null where it is zero (a flat history cannot scale a loss).
    Sorted by ``ts`` for as-of joins.
    """
    prev = pl.col("close").shift(1).over("symbol")
    stats = bars.with_columns(
        (pl.col("close") / prev).log().alias("_log_return"),
        (pl.col("close") - prev).abs().alias("_abs_change"),
    ).with_columns(
        # The first bar of each symbol has no change; rolling windows count that
        # null as a slot but not as a sample, so a window ending at bar i holds
        # exactly the changes into bars i-vol_window+1..i.
        pl.col("_log_return")
        .rolling_std(vol_window, min_samples=MIN_HISTORY_CHANGES)
        .over("symbol")
        .alias("sigma"),
        pl.col("_abs_change")
        .rolling_mean(vol_window, min_samples=MIN_HISTORY_CHANGES)
        .over("symbol")
        .alias("naive_scale"),
    )
    return (
        stats.select(
            "symbol",
            "ts",
            pl.col("close").alias("last_close"),
            "sigma",
            pl.when(pl.col("naive_scale") > 0).then(pl.col("naive_scale")).alias("naive_scale"),
        )
        .sort("ts")
    )


def _attach_history(frame: pl.DataFrame, bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    """Join to each row the last bar at or before its ``as_of`` and the statistics known then."""
    stats = _history_stats(bars, vol_window).rename({"ts": "_bar_ts"})
    return frame.sort("as_of").join_asof(
        stats,
        left_on="as_of",
        right_on="_bar_ts",
        by="symbol",
        strategy="backward",
        check_sortedness=False,
    ).drop("_bar_ts")


# ---------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------


def random_walk_baseline(
    bars: pl.DataFrame,
    horizon: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
) -> pl.DataFrame:
    """Random-walk forecasts for the given horizon bars, using only bars at or before each ``as_of``.

    Parameters
    ----------
    bars
        Realised bars: ``symbol``, ``ts``, ``close``.
    horizon
        The bars to forecast, one row per (symbol, as_of, step): ``symbol``,
        ``as_of``, ``step`` (1..H), ``ts`` (close time of the forecast bar).
        Usually the distinct (symbol, as_of, step, ts) of a model's forecasts.
    vol_window
        One-bar log returns ending at the bar at ``as_of`` behind ``sigma``.

    Returns
    -------
    pl.DataFrame
        Forecast frame (``model_name``, ``symbol``, ``as_of``, ``step``,
        ``ts``, ``p10``, ``p50``, ``p90``) with up to two rows per horizon row:

        * ``baseline-random-walk``: p50 = last close at or before ``as_of``;
          p10 and p90 null.
        * ``baseline-rw-vol``: p50 = last close; p10/p90 = last close *
          exp(z * sigma * sqrt(step)) with z = -/+1.2815515655446004, sigma
          the sample std of the last ``vol_window`` one-bar log returns ending
          at that bar. Omitted where fewer than ``MIN_HISTORY_CHANGES``
          returns exist.

        Horizon rows whose symbol has no bar at or before ``as_of`` get no
        baseline (logged as a warning).
    """
    _check_vol_window(vol_window)
    _require_columns(horizon, ("symbol", "as_of", "step", "ts"), "horizon")
    clean_bars = _check_bars(bars)
    rows = horizon.select("symbol", "as_of", "step", "ts").cast(
        {k: _FORECAST_SCHEMA[k] for k in ("symbol", "as_of", "step", "ts")}  # type: ignore[arg-type]
    )
    if rows.filter(pl.col("step") < 1).height:
        raise ValueError("horizon has rows with step < 1; steps count from 1")
    with_history = _attach_history(rows, clean_bars, vol_window)
    no_history = with_history["last_close"].null_count()
    if no_history:
        logger.warning(
            "%d horizon rows have no bar at or before their as_of; no baseline for them", no_history
        )
    with_history = with_history.filter(pl.col("last_close").is_not_null())

    persistence = with_history.select(
        pl.lit(BASELINE_RANDOM_WALK).alias("model_name"),
        "symbol",
        "as_of",
        "step",
        "ts",
        pl.lit(None, dtype=pl.Float64).alias("p10"),
        pl.col("last_close").alias("p50"),
        pl.lit(None, dtype=pl.Float64).alias("p90"),
    )
    # Log returns of a random walk add up, so the std of the step-h log change
    # is sigma*sqrt(h); exponentiating keeps the band positive and skewed.
    spread = pl.col("sigma") * pl.col("step").cast(pl.Float64).sqrt()
    with_band = with_history.filter(pl.col("sigma").is_not_null()).select(
        pl.lit(BASELINE_RW_VOL).alias("model_name"),
        "symbol",
        "as_of",
        "step",
        "ts",
        (pl.col("last_close") * (_Z_P10 * spread).exp()).alias("p10"),
        pl.col("last_close").alias("p50"),
        (pl.col("last_close") * (_Z_P90 * spread).exp()).alias("p90"),
    )
    return (
        pl.concat([persistence, with_band])
        .cast(_FORECAST_SCHEMA)  # type: ignore[arg-type]
        .sort("model_name", "symbol", "as_of", "step")
    )


def _with_baselines(forecasts: pl.DataFrame, bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    present = sorted(set(forecasts["model_name"].unique().to_list()) & set(BASELINE_MODELS))
    if present:
        raise ValueError(
            f"forecasts already contain baseline models {present}; pass include_baselines=False "
            "or drop them, so the baselines are not scored twice"
        )
    horizon = forecasts.select("symbol", "as_of", "step", "ts").unique()
    clashes = horizon.select("symbol", "as_of", "step").is_duplicated().sum()
    if clashes:
        raise ValueError(
            f"{clashes} (symbol, as_of, step) rows have different ts across models; "
            "the baselines need one target bar per step"
        )
    return pl.concat([forecasts, random_walk_baseline(bars, horizon, vol_window)])


# ---------------------------------------------------------------------------
# Realised outcomes
# ---------------------------------------------------------------------------


def realised_outcomes(
    forecasts: pl.DataFrame, bars: pl.DataFrame, vol_window: int = DEFAULT_VOL_WINDOW
) -> pl.DataFrame:
    """Forecast steps joined to the close realised at exactly their ``ts``.

    Parameters
    ----------
    forecasts
        Forecast frame (see the module docstring).
    bars
        Realised bars: ``symbol``, ``ts``, ``close``.
    vol_window
        One-bar changes behind ``naive_scale`` and ``sigma``.

    Returns
    -------
    pl.DataFrame
        The forecast columns plus ``actual`` (close of the bar at ``ts``),
        ``close_at_as_of`` (close of the last bar at or before ``as_of``: the
        random-walk forecast), ``naive_scale`` (mean absolute one-bar change of
        close, see the module docstring; null with too little history) and
        ``sigma``. Steps without a bar at their ``ts`` (not yet realised, or a
        missing bar) are dropped. Sorted by model_name, symbol, as_of, step.
    """
    _check_vol_window(vol_window)
    clean = _check_forecasts(forecasts)
    clean_bars = _check_bars(bars)
    realised = clean.join(
        clean_bars.rename({"close": "actual"}), on=["symbol", "ts"], how="inner"
    )
    return (
        _attach_history(realised, clean_bars, vol_window)
        .rename({"last_close": "close_at_as_of"})
        .sort("model_name", "symbol", "as_of", "step")
    )


def fully_realised(forecasts: pl.DataFrame, bars: pl.DataFrame) -> pl.DataFrame:
    """Keep only forecasts whose every step has a realised bar at its ``ts``.

    A forecast is one (model_name, symbol, as_of); its horizon is the steps it
    has in ``forecasts``. Averaging over a part-realised horizon would mix
    short-step and long-step losses differently from one forecast to the next.

    Returns
    -------
    pl.DataFrame
        The rows of ``forecasts`` (same columns) belonging to fully realised forecasts.
    """
    clean = _check_forecasts(forecasts)
    bar_keys = _check_bars(bars).select("symbol", "ts").with_columns(pl.lit(True).alias("_realised"))
    key = ["model_name", "symbol", "as_of"]
    complete = (
        clean.join(bar_keys, on=["symbol", "ts"], how="left")
        .group_by(key)
        .agg(pl.col("_realised").is_not_null().all().alias("_complete"))
        .filter(pl.col("_complete"))
        .select(key)
    )
    return clean.join(complete, on=key, how="semi").sort("model_name", "symbol", "as_of", "step")


# ---------------------------------------------------------------------------
# Per-row losses and scores
# ---------------------------------------------------------------------------


def pinball_loss(actual: pl.Expr, quantile: pl.Expr, tau: float) -> pl.Expr:
    """Pinball (quantile) loss ``max(tau * (y - q), (tau - 1) * (y - q))``, in the units of the prices.

    Parameters
    ----------
    actual, quantile
        Expressions for the realised value y and the forecast quantile q.
    tau
        Quantile level in (0, 1).
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie strictly between 0 and 1, got {tau}")
    error = actual - quantile
    return pl.max_horizontal(tau * error, (tau - 1.0) * error)


def _row_losses(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Scaled losses and band hits for each realised step; rows without a naive scale are dropped."""
    unscaled = outcomes.filter(pl.col("naive_scale").is_null()).height
    if unscaled:
        logger.warning(
            "%d realised forecast steps have fewer than %d one-bar changes (or a flat history) before "
            "as_of and are not scored",
            unscaled,
            MIN_HISTORY_CHANGES,
        )
    y = pl.col("actual")
    scale = pl.col("naive_scale")
    has_band = pl.col("p10").is_not_null()
    p10_loss = pinball_loss(y, pl.col("p10"), 0.1) / scale
    p50_loss = pinball_loss(y, pl.col("p50"), 0.5) / scale
    p90_loss = pinball_loss(y, pl.col("p90"), 0.9) / scale
    return outcomes.filter(scale.is_not_null()).with_columns(
        pl.when(has_band).then(3).otherwise(1).cast(pl.Int8).alias("levels"),
        p10_loss.alias("pinball_p10"),
        p50_loss.alias("pinball_p50"),
        p90_loss.alias("pinball_p90"),
        # Mean over the levels the row has: three for a band, one (p50) otherwise.
        pl.when(has_band)
        .then((p10_loss + p50_loss + p90_loss) / 3.0)
        .otherwise(p50_loss)
        .alias("mean_pinball"),
        ((y - pl.col("p50")).abs() / scale).alias("scaled_abs_error"),
        ((y - pl.col("close_at_as_of")).abs() / scale).alias("scaled_rw_abs_error"),
        (y < pl.col("p10")).alias("below_p10"),
        (y > pl.col("p90")).alias("above_p90"),
    )


def score_outcomes(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Scores per (model_name, symbol, step, levels) from ``realised_outcomes`` output.

    See ``score_forecasts`` for the columns.
    """
    _require_columns(
        outcomes, (*_FORECAST_COLUMNS, "actual", "close_at_as_of", "naive_scale"), "outcomes"
    )
    return _scores_of_rows(_row_losses(outcomes))


def _scores_of_rows(rows: pl.DataFrame) -> pl.DataFrame:
    n_below = pl.col("below_p10").sum().cast(pl.Int64)
    n_above = pl.col("above_p90").sum().cast(pl.Int64)
    banded = pl.col("levels").first() == 3
    scores = rows.group_by("model_name", "symbol", "step", "levels").agg(
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("pinball_p10").mean(),
        pl.col("pinball_p50").mean(),
        pl.col("pinball_p90").mean(),
        pl.col("mean_pinball").mean(),
        pl.when(banded).then(n_below).alias("n_below_p10"),
        pl.when(banded).then(n_above).alias("n_above_p90"),
        pl.col("scaled_abs_error").mean().alias("scaled_mae"),
        pl.col("scaled_rw_abs_error").mean().alias("scaled_rw_mae"),
    )
    return _rate_columns(scores).sort("model_name", "symbol", "step", "levels")


def _rate_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Add coverage, tail rates and relative MAE from counts and mean errors."""
    n = pl.col("n").cast(pl.Float64)
    return frame.with_columns(
        ((n - pl.col("n_below_p10") - pl.col("n_above_p90")) / n).alias("coverage_p10_p90"),
        (pl.col("n_below_p10") / n).alias("below_p10_rate"),
        (pl.col("n_above_p90") / n).alias("above_p90_rate"),
        # A zero random-walk error (price unchanged on every row) has no ratio.
        pl.when(pl.col("scaled_rw_mae") > 0)
        .then(pl.col("scaled_mae") / pl.col("scaled_rw_mae"))
        .alias("relative_mae"),
    )


def score_forecasts(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    include_baselines: bool = True,
) -> pl.DataFrame:
    """Scale-free scores of each model per symbol and step, over every realised step.

    Parameters
    ----------
    forecasts
        Forecast frame (see the module docstring), any number of models.
    bars
        Realised bars: ``symbol``, ``ts``, ``close``.
    vol_window
        One-bar changes behind the naive scale (and the baseline's sigma).
    include_baselines
        Also score ``baseline-random-walk`` and ``baseline-rw-vol`` on the
        same (symbol, as_of, step) rows as the given models.

    Returns
    -------
    pl.DataFrame
        One row per (model_name, symbol, step, levels) — one row per
        (model_name, symbol, step) unless a model has a band on some rows and
        not on others — with columns:

        * ``model_name``, ``symbol``, ``step`` (Int32), ``levels`` (Int8):
          quantile levels scored, 3 with a p10-p90 band, 1 for central-only.
        * ``n`` (Int64): realised, scaled forecast steps.
        * ``pinball_p10``, ``pinball_p50``, ``pinball_p90``: mean pinball loss
          divided by the naive scale (p10/p90 null for central-only).
        * ``mean_pinball``: mean over rows of the mean scaled pinball over the
          available levels, a CRPS approximation (CRPS = 2 * integral of the
          pinball loss over the levels). For central-only models it is just
          ``pinball_p50`` = half the scaled absolute error: it is *not*
          comparable with ``mean_pinball`` of banded models; compare ``levels``.
        * ``n_below_p10``, ``n_above_p90`` (Int64), ``coverage_p10_p90``
          (share with p10 <= y <= p90, about 0.8 when calibrated),
          ``below_p10_rate``, ``above_p90_rate`` (about 0.1 each): null for
          central-only models.
        * ``scaled_mae``, ``scaled_rw_mae``: mean scaled absolute error of p50
          and of the random walk (close at ``as_of``) on the same rows.
        * ``relative_mae``: ``scaled_mae / scaled_rw_mae``; below 1 means
          better than persistence.

    Notes
    -----
    Steps whose bar has not closed yet are left out, as are forecasts with
    fewer than ``MIN_HISTORY_CHANGES`` one-bar changes before ``as_of``.
    """
    clean = _check_forecasts(forecasts)
    if include_baselines:
        clean = _with_baselines(clean, bars, vol_window)
    return score_outcomes(realised_outcomes(clean, bars, vol_window))


def summarise_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """Overall scores per (model_name, levels) from ``score_forecasts`` output, weighted by ``n``.

    Returns
    -------
    pl.DataFrame
        Columns ``model_name``, ``levels``, ``n``, ``n_symbols``, the
        n-weighted means ``pinball_p10``, ``pinball_p50``, ``pinball_p90``,
        ``mean_pinball``, ``scaled_mae``, ``scaled_rw_mae``; the summed
        ``n_below_p10``, ``n_above_p90``; ``coverage_p10_p90``,
        ``below_p10_rate``, ``above_p90_rate`` and ``relative_mae`` recomputed
        from those totals (a ratio of pooled means, not a mean of ratios); and
        ``kupiec_lr``, ``kupiec_p_value`` for the band failures against the
        expected 20% (null for central-only models). The pooled steps of one
        forecast and same-day forecasts of related instruments are not
        independent, so the Kupiec p-value is optimistic about significance.
    """
    _require_columns(
        scores,
        ("model_name", "levels", "n", "symbol", "pinball_p10", "pinball_p50", "pinball_p90",
         "mean_pinball", "n_below_p10", "n_above_p90", "scaled_mae", "scaled_rw_mae"),
        "scores",
    )

    def weighted(column: str) -> pl.Expr:
        # Null where a model has no such loss (p10/p90 of central-only models).
        valid = pl.col(column).is_not_null()
        weight = pl.when(valid).then(pl.col("n")).sum()
        return pl.when(weight > 0).then((pl.col(column) * pl.col("n")).sum() / weight).alias(column)

    summary = scores.group_by("model_name", "levels").agg(
        pl.col("n").sum(),
        pl.col("symbol").n_unique().alias("n_symbols"),
        *(weighted(c) for c in ("pinball_p10", "pinball_p50", "pinball_p90", "mean_pinball",
                                "scaled_mae", "scaled_rw_mae")),
        pl.when(pl.col("levels").first() == 3).then(pl.col("n_below_p10").sum()).alias("n_below_p10"),
        pl.when(pl.col("levels").first() == 3).then(pl.col("n_above_p90").sum()).alias("n_above_p90"),
    )
    summary = _rate_columns(summary)
    kupiec = [
        kupiec_pof(n, below + above, EXPECTED_BAND_FAIL_RATE) if below is not None else (None, None)
        for n, below, above in summary.select("n", "n_below_p10", "n_above_p90").iter_rows()
    ]
    return summary.with_columns(
        pl.Series("kupiec_lr", [k[0] for k in kupiec], dtype=pl.Float64),
        pl.Series("kupiec_p_value", [k[1] for k in kupiec], dtype=pl.Float64),
    ).sort("model_name", "levels")


# ---------------------------------------------------------------------------
# Coverage tests
# ---------------------------------------------------------------------------


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
        ``(lr, p_value)``: LR = -2 ln[L(expected_rate) / L(n_fail / n_obs)],
        chi-square with one degree of freedom under the null, and its survival
        function ``erfc(sqrt(lr / 2))``. Zero failures or all failures are
        handled with 0 * log(0) = 0.
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
    """Kupiec test of band failures, firing only with enough observations.

    Parameters
    ----------
    n_obs, n_fail
        Observations and failures (realised close outside p10-p90).
    expected_rate
        Failure rate of a calibrated band (0.2 for p10-p90).
    alpha
        p-value below which the alarm fires.
    min_obs
        Fewest observations for the alarm to fire at all.
    """
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


def rolling_coverage(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    window: int = ROLLING_COVERAGE_WINDOW,
    vol_window: int = DEFAULT_VOL_WINDOW,
) -> pl.DataFrame:
    """Coverage of the p10-p90 band over time, per model with a band.

    At each forecast date the realised steps of all symbols are pooled; each
    point then sums the last ``window`` forecast dates of that model.

    Parameters
    ----------
    forecasts, bars
        As for ``score_forecasts``; central-only rows are ignored.
    window
        Forecast dates (distinct ``as_of`` of that model) per point.
    vol_window
        As for ``realised_outcomes``; only decides which rows have enough
        history to be scored, so that this series counts the same rows as the scores.

    Returns
    -------
    pl.DataFrame
        One row per (model_name, as_of), sorted: ``n_obs``, ``n_below_p10``,
        ``n_above_p90`` (Int64 sums over the window), ``coverage_p10_p90``,
        ``below_p10_rate``, ``above_p90_rate``. The first ``window - 1`` dates
        of each model sum fewer dates; use ``n_obs`` (and ``coverage_alarm``)
        to judge them.
    """
    _check_coverage_window(window)
    return _coverage_of_rows(_row_losses(realised_outcomes(forecasts, bars, vol_window)), window)


def _check_coverage_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be at least 1 forecast date, got {window}")


def _coverage_of_rows(rows: pl.DataFrame, window: int) -> pl.DataFrame:
    rows = rows.filter(pl.col("levels") == 3)
    per_date = (
        rows.group_by("model_name", "as_of")
        .agg(
            pl.len().cast(pl.Int64).alias("n_obs"),
            pl.col("below_p10").sum().cast(pl.Int64).alias("n_below_p10"),
            pl.col("above_p90").sum().cast(pl.Int64).alias("n_above_p90"),
        )
        .sort("model_name", "as_of")
    )
    counts = ("n_obs", "n_below_p10", "n_above_p90")
    rolled = per_date.with_columns(
        pl.col(c).rolling_sum(window, min_samples=1).over("model_name").cast(pl.Int64) for c in counts
    )
    n = pl.col("n_obs").cast(pl.Float64)
    return rolled.with_columns(
        ((n - pl.col("n_below_p10") - pl.col("n_above_p90")) / n).alias("coverage_p10_p90"),
        (pl.col("n_below_p10") / n).alias("below_p10_rate"),
        (pl.col("n_above_p90") / n).alias("above_p90_rate"),
    )


# ---------------------------------------------------------------------------
# Regime-shift canary
# ---------------------------------------------------------------------------


def per_forecast_losses(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    include_baselines: bool = True,
) -> pl.DataFrame:
    """Scaled loss of each fully realised forecast, the input of ``rolling_model_comparison``.

    Parameters
    ----------
    forecasts, bars, vol_window, include_baselines
        As for ``score_forecasts``. Only forecasts whose whole horizon is
        realised are kept (see ``fully_realised``).

    Returns
    -------
    pl.DataFrame
        One row per (model_name, symbol, as_of), sorted: ``levels`` (Int8),
        ``n_steps`` (UInt32), ``mean_pinball`` (mean over the steps of the
        scaled mean pinball over the available levels) and
        ``scaled_abs_error`` (mean over the steps of |y - p50| / naive scale).
    """
    clean = _check_forecasts(forecasts)
    if include_baselines:
        clean = _with_baselines(clean, bars, vol_window)
    return _per_forecast_of_rows(_row_losses(realised_outcomes(fully_realised(clean, bars), bars, vol_window)))


def _per_forecast_of_rows(rows: pl.DataFrame) -> pl.DataFrame:
    return (
        rows.group_by("model_name", "symbol", "as_of", "levels")
        .agg(
            pl.len().alias("n_steps"),
            pl.col("mean_pinball").mean(),
            pl.col("scaled_abs_error").mean(),
        )
        .sort("model_name", "symbol", "as_of", "levels")
    )


def realised_views(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    window: int = ROLLING_COVERAGE_WINDOW,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``score_forecasts``, ``per_forecast_losses`` and ``rolling_coverage`` of the same forecasts, from one join.

    Each of the three on its own joins the forecasts to the bars and builds the losses again: for a
    month of hourly forecasts of two models about a second and a copy of every step each
    (benchmarks/scoring_scale.py). ``forecasts`` must already be fully realised
    (``fully_realised``) and hold whatever baselines are to be scored, as the scoring asset's are;
    the three frames are then those the three functions return with ``include_baselines=False``.
    """
    _check_coverage_window(window)
    rows = _row_losses(realised_outcomes(forecasts, bars, vol_window))
    return _scores_of_rows(rows), _per_forecast_of_rows(rows), _coverage_of_rows(rows, window)


def rolling_model_comparison(
    per_forecast_losses: pl.DataFrame,
    model_a: str,
    model_b: str,
    window: int = CANARY_WINDOW,
    loss_column: str = "mean_pinball",
) -> pl.DataFrame:
    """Rolling mean over forecast dates of (loss of model A - loss of model B).

    Negative means model A has the lower loss. Only (symbol, as_of) pairs both
    models forecast are compared; at each ``as_of`` the differences are
    averaged over symbols, then a rolling mean runs over ``window`` dates. To
    watch one instrument, filter ``per_forecast_losses`` to it first.

    Parameters
    ----------
    per_forecast_losses
        Output of ``per_forecast_losses``.
    model_a, model_b
        Model names to compare.
    window
        Forecast dates in the rolling mean.
    loss_column
        ``"mean_pinball"`` (only when both models have the same ``levels``:
        a central-only model's mean pinball is half its absolute error and
        not comparable with a banded model's) or ``"scaled_abs_error"``
        (error of p50, comparable between any two models).

    Returns
    -------
    pl.DataFrame
        One row per shared ``as_of``, sorted: ``n_pairs`` (UInt32),
        ``diff`` (mean difference that date) and ``rolling_diff`` (null for the
        first ``window - 1`` dates), in naive-scale units.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 forecast date, got {window}")
    if model_a == model_b:
        raise ValueError(f"model_a and model_b are both {model_a!r}; compare two different models")
    if loss_column not in ("mean_pinball", "scaled_abs_error"):
        raise ValueError(f"loss_column must be 'mean_pinball' or 'scaled_abs_error', got {loss_column!r}")
    _require_columns(
        per_forecast_losses, ("model_name", "symbol", "as_of", "levels", loss_column), "per_forecast_losses"
    )

    def one_model(name: str, suffix: str) -> pl.DataFrame:
        rows = per_forecast_losses.filter(pl.col("model_name") == name)
        if rows.is_empty():
            raise ValueError(f"per_forecast_losses has no rows for model {name!r}")
        return rows.select("symbol", "as_of", pl.col("levels").alias(f"levels{suffix}"),
                           pl.col(loss_column).alias(f"loss{suffix}"))

    pairs = one_model(model_a, "_a").join(one_model(model_b, "_b"), on=["symbol", "as_of"], how="inner")
    if loss_column == "mean_pinball" and pairs.filter(pl.col("levels_a") != pl.col("levels_b")).height:
        raise ValueError(
            f"{model_a!r} and {model_b!r} score different numbers of quantile levels, so their "
            "mean_pinball is not comparable; use loss_column='scaled_abs_error'"
        )
    return (
        pairs.group_by("as_of")
        .agg(pl.len().alias("n_pairs"), (pl.col("loss_a") - pl.col("loss_b")).mean().alias("diff"))
        .sort("as_of")
        .with_columns(pl.col("diff").rolling_mean(window, min_samples=window).alias("rolling_diff"))
    )


def detect_sign_flip(
    diff: pl.Series | Sequence[float | None],
    persist: int = CANARY_PERSIST,
    deadband: float = CANARY_DEADBAND,
    times: pl.Series | Sequence[datetime] | None = None,
) -> list[SignFlip]:
    """Confirmed flips of the sign of a rolling difference.

    A point "has a sign" when |diff| > ``deadband``. The first run of
    ``persist`` consecutive points with the same sign sets the current sign
    without an event; afterwards, ``persist`` consecutive points with the
    opposite sign are a flip. Points inside the deadband, or null, break a run
    without changing the current sign.

    Parameters
    ----------
    diff
        Rolling difference in time order, e.g. ``rolling_diff`` of
        ``rolling_model_comparison``. Shape (n,).
    persist
        Consecutive points on the new side needed to confirm a flip (>= 1).
    deadband
        Smallest |diff| that counts as a sign (>= 0), in the units of ``diff``.
    times
        Optional labels of the points, shape (n,), e.g. ``as_of``.

    Returns
    -------
    list[SignFlip]
        One event per flip, in time order.
    """
    if persist < 1:
        raise ValueError(f"persist must be at least 1 point, got {persist}")
    if deadband < 0 or math.isnan(deadband):
        raise ValueError(f"deadband must be a non-negative number, got {deadband}")
    values = diff.to_list() if isinstance(diff, pl.Series) else list(diff)
    labels = None if times is None else (times.to_list() if isinstance(times, pl.Series) else list(times))
    if labels is not None and len(labels) != len(values):
        raise ValueError(f"times has {len(labels)} points but diff has {len(values)}")

    events: list[SignFlip] = []
    current = 0  # established sign; 0 until the first persistent run
    run_sign = 0
    run_start = 0
    run_length = 0
    for i, value in enumerate(values):
        sign = 0
        if value is not None and not math.isnan(value) and abs(value) > deadband:
            sign = 1 if value > 0 else -1
        if sign == 0 or sign == current:
            run_sign, run_length = 0, 0
            continue
        if sign != run_sign:
            run_sign, run_start, run_length = sign, i, 0
        run_length += 1
        if run_length == persist:
            if current != 0:
                events.append(
                    SignFlip(
                        started_index=run_start,
                        confirmed_index=i,
                        started_at=None if labels is None else labels[run_start],
                        confirmed_at=None if labels is None else labels[i],
                        from_sign=current,
                        to_sign=sign,
                        value=float(value),
                    )
                )
            current = sign
            run_sign, run_length = 0, 0
    return events
