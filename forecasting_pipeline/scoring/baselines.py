"""The two reference forecasts every model must beat, and the point-in-time history they stand on.

* ``baseline-random-walk``: p50 is the last close at or before ``as_of``; no band.
* ``baseline-rw-vol``: the same p50 with a band from the historical volatility of one-bar log returns.

Both use only bars at or before each ``as_of``. The same trailing window of one-bar changes gives
the *naive scale* that every loss is divided by (see ``losses``).
"""

from __future__ import annotations

import logging

import polars as pl

from forecasting_pipeline.scoring.frames import FORECAST_SCHEMA, check_bars, require_columns
from forecasting_pipeline.storage.ml_predictions import MODEL_NAME

logger = logging.getLogger(__name__)

BASELINE_RANDOM_WALK = "baseline-random-walk"
"""Model name of the persistence forecast: p50 is the last close, no band."""

BASELINE_RW_VOL = "baseline-rw-vol"
"""Model name of the random walk with a historical-volatility band."""

BASELINE_MODELS = (BASELINE_RANDOM_WALK, BASELINE_RW_VOL)

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

_HORIZON_COLUMNS = ("symbol", "as_of", "step", "ts")


def check_vol_window(vol_window: int) -> None:
    if vol_window < MIN_HISTORY_CHANGES:
        raise ValueError(
            f"vol_window must be at least MIN_HISTORY_CHANGES={MIN_HISTORY_CHANGES} one-bar changes, got {vol_window}"
        )


def history_stats(bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    """Per bar, the close and the trailing statistics known at its close.

    Returns columns ``symbol``, ``ts``, ``last_close``, ``sigma`` (sample std of the last
    ``vol_window`` one-bar log returns ending at this bar) and ``naive_scale`` (mean absolute
    one-bar change of close over the same changes); both null with fewer than
    ``MIN_HISTORY_CHANGES`` changes, and the scale null where it is zero (a flat history cannot
    scale a loss). Sorted by ``ts`` for as-of joins.
    """
    prev = pl.col("close").shift(1).over("symbol")
    stats = bars.with_columns(
        (pl.col("close") / prev).log().alias("_log_return"),
        (pl.col("close") - prev).abs().alias("_abs_change"),
    ).with_columns(
        # The first bar of each symbol has no change; rolling windows count that
        # null as a slot but not as a sample, so a window ending at bar i holds
        # exactly the changes into bars i-vol_window+1..i.
        pl.col("_log_return").rolling_std(vol_window, min_samples=MIN_HISTORY_CHANGES).over("symbol").alias("sigma"),
        pl.col("_abs_change")
        .rolling_mean(vol_window, min_samples=MIN_HISTORY_CHANGES)
        .over("symbol")
        .alias("naive_scale"),
    )
    return stats.select(
        "symbol",
        "ts",
        pl.col("close").alias("last_close"),
        "sigma",
        pl.when(pl.col("naive_scale") > 0).then(pl.col("naive_scale")).alias("naive_scale"),
    ).sort("ts")


def attach_history(frame: pl.DataFrame, bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    """Join to each row the last bar at or before its ``as_of`` and the statistics known then."""
    stats = history_stats(bars, vol_window).rename({"ts": "_bar_ts"})
    return frame.sort("as_of").join_asof(
        stats, left_on="as_of", right_on="_bar_ts", by="symbol", strategy="backward", check_sortedness=False
    ).drop("_bar_ts")


def baseline_horizon(forecasts: pl.DataFrame) -> pl.DataFrame:
    """The bars the baselines forecast: one target per (symbol, as_of, step), over every model's steps.

    Should two models label a step's bar differently, Chronos-2's label is used (models sort with
    ``chronos-2`` first), so the baselines never need two targets for one step.
    """
    order = pl.when(pl.col("model_name") == MODEL_NAME).then(0).otherwise(1)
    return (
        forecasts.sort(order, "model_name")
        .select(_HORIZON_COLUMNS)
        .unique(subset=["symbol", "as_of", "step"], keep="first", maintain_order=True)
    )


def random_walk_baseline(
    bars: pl.DataFrame, horizon: pl.DataFrame, vol_window: int = DEFAULT_VOL_WINDOW
) -> pl.DataFrame:
    """Random-walk forecasts for the given horizon bars, using only bars at or before each ``as_of``.

    Parameters
    ----------
    bars
        Realised bars: ``symbol``, ``ts``, ``close``.
    horizon
        The bars to forecast, one row per (symbol, as_of, step): ``symbol``, ``as_of``, ``step``
        (1..H), ``ts`` (close time of the forecast bar); ``baseline_horizon`` of the models' forecasts.
    vol_window
        One-bar log returns ending at the bar at ``as_of`` behind ``sigma``.

    Returns
    -------
    pl.DataFrame
        Forecast frame with up to two rows per horizon row: ``baseline-random-walk`` (p50 = last
        close at or before ``as_of``; no band) and ``baseline-rw-vol`` (p10/p90 = last close *
        exp(z * sigma * sqrt(step)), z = -/+1.2815515655446004; omitted where fewer than
        ``MIN_HISTORY_CHANGES`` returns exist). Horizon rows whose symbol has no bar at or
        before ``as_of`` get no baseline (logged as a warning).
    """
    check_vol_window(vol_window)
    require_columns(horizon, _HORIZON_COLUMNS, "horizon")
    rows = horizon.select(_HORIZON_COLUMNS).cast({k: FORECAST_SCHEMA[k] for k in _HORIZON_COLUMNS})  # type: ignore[arg-type]
    if rows.filter(pl.col("step") < 1).height:
        raise ValueError("horizon has rows with step < 1; steps count from 1")
    with_history = attach_history(rows, check_bars(bars), vol_window)
    no_history = with_history["last_close"].null_count()
    if no_history:
        logger.warning("%d horizon rows have no bar at or before their as_of; no baseline for them", no_history)
    with_history = with_history.filter(pl.col("last_close").is_not_null())
    no_band = pl.lit(None, dtype=pl.Float64)
    persistence = with_history.select(
        pl.lit(BASELINE_RANDOM_WALK).alias("model_name"), *_HORIZON_COLUMNS,
        no_band.alias("p10"), pl.col("last_close").alias("p50"), no_band.alias("p90"),
    )
    # Log returns of a random walk add up, so the std of the step-h log change
    # is sigma*sqrt(h); exponentiating keeps the band positive and skewed.
    spread = pl.col("sigma") * pl.col("step").cast(pl.Float64).sqrt()
    with_band = with_history.filter(pl.col("sigma").is_not_null()).select(
        pl.lit(BASELINE_RW_VOL).alias("model_name"), *_HORIZON_COLUMNS,
        (pl.col("last_close") * (_Z_P10 * spread).exp()).alias("p10"),
        pl.col("last_close").alias("p50"),
        (pl.col("last_close") * (_Z_P90 * spread).exp()).alias("p90"),
    )
    return (
        pl.concat([persistence, with_band])
        .cast(FORECAST_SCHEMA)  # type: ignore[arg-type]
        .sort("model_name", "symbol", "as_of", "step")
    )
