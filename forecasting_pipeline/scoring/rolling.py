"""Scores over time: per forecast date, pooled over the last few dates, from per-forecast losses.

A forecast date is a distinct ``as_of`` of a model. Each point of a rolling series pools the
per-forecast losses (``frames.PER_FORECAST_SCHEMA``) of every symbol over the last
``ROLLING_WINDOW`` forecast dates of that model.
"""

from __future__ import annotations

import polars as pl

from forecasting_pipeline.scoring.baselines import BASELINE_RANDOM_WALK
from forecasting_pipeline.scoring.coverage import band_rates

ROLLING_WINDOW = 20
"""Forecast dates pooled into each point of the rolling series (the span of the canary's window)."""

_COUNTS = ("n_obs", "n_below_p10", "n_above_p90")


def _check_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be at least 1 forecast date, got {window}")


def rolling_coverage(per_forecast: pl.DataFrame, window: int = ROLLING_WINDOW) -> pl.DataFrame:
    """Coverage of the p10-p90 band over time, per model with a band.

    Returns one row per (model_name, as_of), sorted: ``n_obs``, ``n_below_p10``, ``n_above_p90``
    (Int64 sums over the window's steps), ``coverage_p10_p90``, ``below_p10_rate``,
    ``above_p90_rate``. The first ``window - 1`` dates of each model sum fewer dates; use
    ``n_obs`` (and ``coverage.coverage_alarm``) to judge them.
    """
    _check_window(window)
    per_date = (
        per_forecast.filter(pl.col("levels") == 3)
        .group_by("model_name", "as_of")
        .agg(
            pl.col("n_steps").sum().cast(pl.Int64).alias("n_obs"),
            pl.col("n_below_p10").sum().cast(pl.Int64),
            pl.col("n_above_p90").sum().cast(pl.Int64),
        )
        .sort("model_name", "as_of")
    )
    rolled = per_date.with_columns(
        pl.col(c).rolling_sum(window, min_samples=1).over("model_name").cast(pl.Int64) for c in _COUNTS
    )
    return rolled.with_columns(band_rates(n="n_obs"))


def rolling_relative_mae(per_forecast: pl.DataFrame, window: int = ROLLING_WINDOW) -> pl.DataFrame:
    """Relative MAE of each model's p50 against the random walk, pooled over the last ``window`` forecast dates.

    At each forecast date the scaled absolute errors of a model and of ``baseline-random-walk``
    are summed over the symbols both forecast; each point divides the model's sum by the random
    walk's over the last ``window`` dates of that model (a ratio of pooled errors, like
    ``relative_mae`` in the scores). Below 1 means better than persistence.

    Returns ``model_name``, ``as_of``, ``relative_mae``; no rows for the random walk itself.
    """
    _check_window(window)
    rw = per_forecast.filter(pl.col("model_name") == BASELINE_RANDOM_WALK).select(
        "symbol", "as_of", pl.col("scaled_abs_error").alias("_rw")
    )
    per_date = (
        per_forecast.filter(pl.col("model_name") != BASELINE_RANDOM_WALK)
        .join(rw, on=["symbol", "as_of"], how="inner")
        .group_by("model_name", "as_of")
        .agg(pl.col("scaled_abs_error").sum().alias("_err"), pl.col("_rw").sum())
        .sort("model_name", "as_of")
    )
    rolled = per_date.with_columns(
        pl.col("_err").rolling_sum(window, min_samples=1).over("model_name"),
        pl.col("_rw").rolling_sum(window, min_samples=1).over("model_name"),
    )
    return rolled.select(
        "model_name", "as_of", pl.when(pl.col("_rw") > 0).then(pl.col("_err") / pl.col("_rw")).alias("relative_mae")
    )


def rolling_scaled_mae(per_forecast: pl.DataFrame, window: int = ROLLING_WINDOW) -> pl.DataFrame:
    """Scaled MAE of each model's p50 (baselines included), pooled over the last ``window`` forecast dates.

    The absolute error of p50 at each step is divided by the naive scale at the forecast's
    ``as_of`` (1.0 = a typical one-bar move, as ``scaled_mae`` in the scores); each point averages
    it over every step of the model's forecasts of its last ``window`` dates.

    Returns ``model_name``, ``as_of``, ``scaled_mae``, sorted.
    """
    _check_window(window)
    per_date = (
        per_forecast.group_by("model_name", "as_of")
        .agg((pl.col("scaled_abs_error") * pl.col("n_steps")).sum().alias("_err"), pl.col("n_steps").sum().alias("_n"))
        .sort("model_name", "as_of")
    )
    rolled = per_date.with_columns(pl.col(c).rolling_sum(window, min_samples=1).over("model_name") for c in ("_err", "_n"))
    return rolled.select("model_name", "as_of", (pl.col("_err") / pl.col("_n")).alias("scaled_mae"))


def rolling_series(coverage: pl.DataFrame, relative: pl.DataFrame) -> pl.DataFrame:
    """The long frame ``as_of``, ``model_name``, ``metric``, ``value`` that ``plots.rolling_scores_png`` draws."""
    def long(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
        return frame.select("as_of", "model_name", pl.lit(metric).alias("metric"), pl.col(metric).alias("value"))

    return pl.concat([long(coverage, "coverage_p10_p90"), long(relative, "relative_mae")]).sort(
        "metric", "model_name", "as_of"
    )
