"""Losses of forecasts against realised closes: per step, per forecast, and the score sums they add to.

Scaling
-------
Pinball losses and absolute errors are divided by the *naive scale* of the forecast: the mean
absolute one-bar change of close over the last ``vol_window`` one-bar changes ending at the bar
at ``as_of`` (a MASE-style in-sample scale; it needs ``vol_window + 1`` closes, and uses what
there is, down to ``MIN_HISTORY_CHANGES``, early in a symbol's history). A scaled loss of 1.0 is
"as large as a typical one-bar move", so losses on a 5 USD and a 50,000 USD instrument can be
averaged. Nothing after ``as_of`` enters the scale or the baselines.

A forecast is scored only once its whole horizon is realised (every step has a bar at its
``ts``): averaging over a part-realised horizon would mix short-step and long-step losses
differently from one forecast to the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from forecasting_pipeline.scoring.baselines import (
    BASELINE_MODELS,
    DEFAULT_VOL_WINDOW,
    MIN_HISTORY_CHANGES,
    attach_history,
    baseline_horizon,
    check_vol_window,
    random_walk_baseline,
)
from forecasting_pipeline.scoring.frames import (
    PER_FORECAST_COLUMNS,
    PER_FORECAST_SCHEMA,
    check_bars,
    check_forecasts,
)
from forecasting_pipeline.scoring.scores import empty_sums, score_sums

logger = logging.getLogger(__name__)

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
"""Levels scored, in the order of the columns ``p10``, ``p50``, ``p90``."""

FORECAST_KEY = ("model_name", "symbol", "as_of")


@dataclass(frozen=True)
class ScoredForecasts:
    """The losses of a set of fully realised forecasts.

    Attributes
    ----------
    per_forecast
        One row per scored forecast (``frames.PER_FORECAST_SCHEMA``), baselines included.
    sums
        Additive score sums per (model_name, symbol, step, levels): ``scores.score_sums``.
    unscaled
        (model_name, symbol, as_of) of the forecasts left unscored because fewer than
        ``MIN_HISTORY_CHANGES`` one-bar changes (or only flat ones) precede their ``as_of``.
    """

    per_forecast: pl.DataFrame
    sums: pl.DataFrame
    unscaled: pl.DataFrame


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


def fully_realised(forecasts: pl.DataFrame, bars: pl.DataFrame) -> pl.DataFrame:
    """The rows of the forecasts (one per model_name, symbol, as_of) whose every step has a bar at its ``ts``."""
    clean = check_forecasts(forecasts)
    bar_keys = check_bars(bars).select("symbol", "ts").with_columns(pl.lit(True).alias("_realised"))
    complete = (
        clean.join(bar_keys, on=["symbol", "ts"], how="left")
        .group_by(FORECAST_KEY)
        .agg(pl.col("_realised").is_not_null().all().alias("_complete"))
        .filter(pl.col("_complete"))
        .select(FORECAST_KEY)
    )
    return clean.join(complete, on=FORECAST_KEY, how="semi").sort("model_name", "symbol", "as_of", "step")


def realised_outcomes(forecasts: pl.DataFrame, bars: pl.DataFrame, vol_window: int = DEFAULT_VOL_WINDOW) -> pl.DataFrame:
    """Forecast steps joined to the close realised at exactly their ``ts``.

    Returns the forecast columns plus ``actual`` (close of the bar at ``ts``), ``close_at_as_of``
    (close of the last bar at or before ``as_of``: the random-walk forecast), ``naive_scale``
    (null with too little history) and ``sigma``. Steps without a bar at their ``ts`` are
    dropped. Sorted by model_name, symbol, as_of, step.
    """
    check_vol_window(vol_window)
    clean_bars = check_bars(bars)
    realised = check_forecasts(forecasts).join(clean_bars.rename({"close": "actual"}), on=["symbol", "ts"], how="inner")
    return (
        attach_history(realised, clean_bars, vol_window)
        .rename({"last_close": "close_at_as_of"})
        .sort("model_name", "symbol", "as_of", "step")
    )


def step_losses(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Scaled losses and band hits of each realised step (``realised_outcomes`` rows that have a scale).

    Adds ``levels`` (3 with a band, 1 for a central forecast), ``pinball_p10/p50/p90``,
    ``mean_pinball`` (mean over the levels the row has), ``scaled_abs_error`` (|y - p50|),
    ``scaled_rw_abs_error`` (|y - close at as_of|), ``below_p10`` and ``above_p90``.
    """
    y, scale = pl.col("actual"), pl.col("naive_scale")
    has_band = pl.col("p10").is_not_null()
    p10_loss = pinball_loss(y, pl.col("p10"), 0.1) / scale
    p50_loss = pinball_loss(y, pl.col("p50"), 0.5) / scale
    p90_loss = pinball_loss(y, pl.col("p90"), 0.9) / scale
    return outcomes.filter(scale.is_not_null()).with_columns(
        pl.when(has_band).then(3).otherwise(1).cast(pl.Int8).alias("levels"),
        p10_loss.alias("pinball_p10"),
        p50_loss.alias("pinball_p50"),
        p90_loss.alias("pinball_p90"),
        pl.when(has_band).then((p10_loss + p50_loss + p90_loss) / 3.0).otherwise(p50_loss).alias("mean_pinball"),
        ((y - pl.col("p50")).abs() / scale).alias("scaled_abs_error"),
        ((y - pl.col("close_at_as_of")).abs() / scale).alias("scaled_rw_abs_error"),
        (y < pl.col("p10")).alias("below_p10"),
        (y > pl.col("p90")).alias("above_p90"),
    )


def per_forecast_of_steps(steps: pl.DataFrame) -> pl.DataFrame:
    """One row per (model_name, symbol, as_of, levels) of ``step_losses`` rows: ``frames.PER_FORECAST_SCHEMA``."""
    banded = pl.col("levels").first() == 3
    return (
        steps.group_by("model_name", "symbol", "as_of", "levels")
        .agg(
            pl.col("ts").max().alias("realised_at"),
            pl.len().alias("n_steps"),
            pl.col("mean_pinball").mean(),
            pl.col("scaled_abs_error").mean(),
            pl.col("scaled_rw_abs_error").mean(),
            pl.when(banded).then(pl.col("below_p10").sum()).alias("n_below_p10"),
            pl.when(banded).then(pl.col("above_p90").sum()).alias("n_above_p90"),
        )
        .select(PER_FORECAST_COLUMNS)
        .cast(PER_FORECAST_SCHEMA)  # type: ignore[arg-type]
        .sort("model_name", "symbol", "as_of", "levels")
    )


def score_realised(
    realised: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    baseline_keys: pl.DataFrame | None = None,
) -> ScoredForecasts:
    """Score fully realised forecasts of any models, and the baselines on their horizon.

    Parameters
    ----------
    realised
        Forecast frame (``frames``) of fully realised forecasts, every ``as_of`` set.
    bars
        Realised bars covering the horizons and ``vol_window + 1`` bars before each ``as_of``.
    vol_window
        One-bar changes behind the naive scale and the baseline's sigma.
    baseline_keys
        (symbol, as_of) at which to forecast the baselines; None: every (symbol, as_of) of
        ``realised``. An incremental run passes only the keys that have no baseline yet.
    """
    if realised.is_empty():
        empty = pl.DataFrame(schema=PER_FORECAST_SCHEMA)
        return ScoredForecasts(empty, empty_sums(), empty.select(FORECAST_KEY))
    present = sorted(set(realised["model_name"].unique().to_list()) & set(BASELINE_MODELS))
    if present:
        raise ValueError(f"forecasts already contain baseline models {present}; the baselines are added here")
    horizon = baseline_horizon(realised)
    if baseline_keys is not None:
        horizon = horizon.join(baseline_keys.select("symbol", "as_of"), on=["symbol", "as_of"], how="semi")
    everything = pl.concat([check_forecasts(realised), random_walk_baseline(bars, horizon, vol_window)])
    outcomes = realised_outcomes(everything, bars, vol_window)
    steps = step_losses(outcomes)
    unscaled = outcomes.filter(pl.col("naive_scale").is_null()).select(FORECAST_KEY).unique()
    if unscaled.height:
        logger.warning(
            "%d realised forecasts have fewer than %d one-bar changes (or a flat history) before as_of "
            "and are not scored", unscaled.height, MIN_HISTORY_CHANGES,
        )
    return ScoredForecasts(per_forecast_of_steps(steps), score_sums(steps), unscaled.sort(FORECAST_KEY))


def per_forecast_losses(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    include_baselines: bool = True,
) -> pl.DataFrame:
    """Per-forecast losses computed from forecasts and bars directly, for backfills with nothing stored.

    The same losses the scoring run stores in ``forecast_losses`` (see
    ``evaluation.losses_realised_by``): pass bars closed at or before an instant t and only
    forecasts whose whole horizon was realised by t are kept, each scaled with bars at or before
    its own ``as_of``.

    Parameters
    ----------
    forecasts
        Forecast frame (``frames``), any number of models, every ``as_of`` set (Kronos rows:
        ``forecasts.place_as_of`` first).
    bars
        Realised bars: ``symbol``, ``ts``, ``close``.
    vol_window
        One-bar changes behind the naive scale (and the baselines' sigma).
    include_baselines
        Also return ``baseline-random-walk`` and ``baseline-rw-vol`` on the same horizons.

    Returns
    -------
    pl.DataFrame
        ``frames.PER_FORECAST_SCHEMA``, sorted: ``mean_pinball`` is the scaled pinball loss
        averaged over levels and steps, ``scaled_abs_error`` that of p50.
    """
    scored = score_realised(fully_realised(forecasts, bars), bars, vol_window)
    if include_baselines:
        return scored.per_forecast
    return scored.per_forecast.filter(~pl.col("model_name").is_in(BASELINE_MODELS))
