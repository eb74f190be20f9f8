"""Forecast rows from model output: calendar timestamps per step, and the forecasts that must not be stored.

Forecast bars are timestamped from each instrument's trading calendar, not by the model
(``predict_df`` infers a frequency and mislabels gapped exchange-hours bars).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import polars as pl

from forecasting_pipeline.forecasting.inputs import Rejection, SeriesKey
from forecasting_pipeline.times import epoch_us

FORECAST_SCHEMA = {
    "symbol": pl.Utf8,
    "as_of": pl.Datetime("us", "UTC"),
    "step": pl.Int32,
    "ts": pl.Datetime("us", "UTC"),
    "p10": pl.Float64,
    "p50": pl.Float64,
    "p90": pl.Float64,
}



def shape_forecasts(
    keys: Sequence[SeriesKey],
    quantiles: np.ndarray,
    forecast_times: Callable[[str, datetime, int], Sequence[datetime] | np.ndarray],
) -> pl.DataFrame:
    """Turn model output into long forecast rows with calendar timestamps.

    Parameters
    ----------
    keys
        One per series, in the order of ``quantiles``.
    quantiles
        Array (n_series, horizon, 3) of p10, p50, p90 in price units.
    forecast_times
        ``(symbol, as_of, n) -> n`` bar close times after ``as_of`` on that instrument's calendar:
        datetimes, or int64 microseconds since the epoch.

    Returns
    -------
    polars.DataFrame
        Columns of ``FORECAST_SCHEMA`` plus ``window``: ``n_series * horizon`` rows.
    """
    if quantiles.shape[0] != len(keys):
        raise ValueError(f"got {quantiles.shape[0]} forecasts for {len(keys)} series")
    horizon = quantiles.shape[1]
    times = np.array([_epoch_us(forecast_times(k.symbol, k.as_of, horizon)) for k in keys], dtype=np.int64)
    frame = pl.DataFrame({
        "window": np.repeat(np.array([k.window for k in keys], dtype=object), horizon),
        "symbol": np.repeat(np.array([k.symbol for k in keys], dtype=object), horizon),
        "as_of": np.repeat(np.array([epoch_us(k.as_of) for k in keys], dtype=np.int64), horizon),
        "step": np.tile(np.arange(1, horizon + 1, dtype=np.int32), len(keys)),
        "ts": times.reshape(-1),
        "p10": quantiles[:, :, 0].reshape(-1).astype(np.float64),
        "p50": quantiles[:, :, 1].reshape(-1).astype(np.float64),
        "p90": quantiles[:, :, 2].reshape(-1).astype(np.float64),
    }) if len(keys) else pl.DataFrame(schema={"window": pl.Utf8, **FORECAST_SCHEMA})
    instants = [pl.col(c).cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") for c in ("as_of", "ts")]
    return frame.with_columns(instants).cast({"window": pl.Utf8, **FORECAST_SCHEMA}).select("window", *FORECAST_SCHEMA)


def _epoch_us(times: Sequence[datetime] | np.ndarray) -> np.ndarray | list[int]:
    if isinstance(times, np.ndarray):
        return times.astype("datetime64[us]").astype(np.int64) if times.dtype.kind == "M" else times.astype(np.int64)
    return [epoch_us(t) for t in times]


def unfit_forecasts(forecasts: pl.DataFrame, horizon: int) -> list[Rejection]:
    """One rejection per window and instrument whose forecast must not be stored.

    Unfit: a step count other than ``horizon``, a non-finite quantile (the model's float32 output
    overflows near its range), or crossing quantiles. The first offending step is named.
    """
    flagged = forecasts.with_columns(
        nonfinite=~pl.all_horizontal(pl.col("p10", "p50", "p90").is_finite()),
        crossed=(pl.col("p10") > pl.col("p50")) | (pl.col("p50") > pl.col("p90")),
    )
    summary = flagged.group_by("window", "symbol").agg(
        pl.len().alias("steps"),
        pl.col("ts").filter(pl.col("nonfinite")).first().alias("nonfinite_at"),
        pl.col("ts").filter(pl.col("crossed")).first().alias("crossed_at"),
    ).sort("window", "symbol")
    rejected = []
    for row in summary.iter_rows(named=True):
        if row["steps"] != horizon:
            rule, message = "horizon", f"{row['steps']} steps, expected {horizon}"
        elif row["nonfinite_at"] is not None:
            rule, message = "non_finite", f"non-finite quantile at {row['nonfinite_at'].isoformat()}"
        elif row["crossed_at"] is not None:
            rule, message = "crossing", f"quantiles cross at {row['crossed_at'].isoformat()}"
        else:
            continue
        rejected.append(Rejection(row["window"], row["symbol"], rule, message))
    return rejected


class AllForecastsRejectedError(ValueError):
    """Every instrument of a window was rejected: nothing would be written for it."""


def rejections_frame(rejected: Sequence[Rejection]) -> pl.DataFrame:
    """Rejections as a table (window, symbol, rule, message), for metadata."""
    return pl.DataFrame(
        [(r.window, r.symbol, r.rule, r.message) for r in rejected],
        schema={"window": pl.Utf8, "symbol": pl.Utf8, "rule": pl.Utf8, "message": pl.Utf8}, orient="row",
    )


def drop_rejected(forecasts: pl.DataFrame, rejected: Sequence[Rejection]) -> pl.DataFrame:
    """The forecast rows of every window and instrument not in ``rejected``."""
    if not rejected:
        return forecasts
    left_out = pl.DataFrame(
        {"window": [r.window for r in rejected], "symbol": [r.symbol for r in rejected]},
        schema={"window": pl.Utf8, "symbol": pl.Utf8},
    )
    return forecasts.join(left_out, on=["window", "symbol"], how="anti")
