"""Chronos-2 quantile forecasts: model inputs from covariates, one batched call, and forecast shaping.

Forecast bars are timestamped from each instrument's trading calendar, not by the model
(``predict_df`` infers a frequency and mislabels gapped exchange-hours bars).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from forecasting_pipeline.features import COVARIATE_COLUMNS

logger = logging.getLogger(__name__)

QUANTILE_LEVELS = (0.1, 0.5, 0.9)

FORECAST_SCHEMA = {
    "symbol": pl.Utf8,
    "as_of": pl.Datetime("us", "UTC"),
    "step": pl.Int32,
    "ts": pl.Datetime("us", "UTC"),
    "p10": pl.Float64,
    "p50": pl.Float64,
    "p90": pl.Float64,
}


@dataclass(frozen=True)
class SeriesKey:
    """Which forecast a model input belongs to: a partition window and an instrument."""

    window: str
    symbol: str
    as_of: datetime


def model_inputs(covariates: pl.DataFrame, window: str, context_length: int) -> tuple[list[SeriesKey], list[dict]]:
    """Build one ``predict_quantiles`` input per instrument from a window's covariates.

    Returns
    -------
    keys, inputs
        ``inputs[i]`` is ``{"target": (T,), "past_covariates": {name: (T,)}}`` with T <= context_length,
        float32; ``keys[i]`` says whose it is, with ``as_of`` the close time of its last bar.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    keys: list[SeriesKey] = []
    inputs: list[dict] = []
    for (symbol,), frame in covariates.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        frame = frame.tail(context_length)
        target = frame["close"].to_numpy().astype(np.float32)
        bad = ~np.isfinite(target)
        if bad.all():
            # The model returns values near 0 for an all-NaN target instead of failing.
            raise ValueError(f"{window}: {symbol}: the close has no finite value in the context")
        if bad.any():
            first = frame["ts"][int(np.argmax(bad))]
            raise ValueError(f"{window}: {symbol}: non-finite close at bar {first.isoformat()}")
        keys.append(SeriesKey(window, symbol, frame["ts"][-1]))
        inputs.append(
            {
                "target": target,
                "past_covariates": {name: frame[name].to_numpy().astype(np.float32) for name in COVARIATE_COLUMNS},
            }
        )
    return keys, inputs


def predict_quantiles(
    pipeline,
    inputs: Sequence[dict],
    horizon: int,
    context_length: int,
    batch_size: int = 256,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
) -> np.ndarray:
    """Run one batched Chronos-2 call and return quantiles of shape (n_series, horizon, n_levels).

    Quantiles are sorted along the last axis: Chronos-2's quantile heads are trained
    independently and can cross (p10 > p50), which a stored forecast must never show.
    """
    if not inputs:
        return np.empty((0, horizon, len(quantile_levels)), dtype=np.float64)
    quantiles, _median = pipeline.predict_quantiles(
        list(inputs),
        prediction_length=horizon,
        quantile_levels=list(quantile_levels),
        context_length=context_length,
        batch_size=batch_size,
    )
    # Each element is (n_targets=1, horizon, n_levels).
    stacked = np.stack([q[0].float().numpy() for q in quantiles]).astype(np.float64)
    return np.sort(stacked, axis=-1)


def shape_forecasts(
    keys: Sequence[SeriesKey],
    quantiles: np.ndarray,
    forecast_times: Callable[[str, datetime, int], list[datetime]],
) -> pl.DataFrame:
    """Turn model output into long forecast rows with calendar timestamps.

    Parameters
    ----------
    keys
        One per series, in the order of ``quantiles``.
    quantiles
        Array (n_series, horizon, 3) of p10, p50, p90 in price units.
    forecast_times
        ``(symbol, as_of, n) -> n`` bar close times after ``as_of`` on that instrument's calendar.

    Returns
    -------
    polars.DataFrame
        Columns of ``FORECAST_SCHEMA`` plus ``window``: ``n_series * horizon`` rows.
    """
    if quantiles.shape[0] != len(keys):
        raise ValueError(f"got {quantiles.shape[0]} forecasts for {len(keys)} series")
    horizon = quantiles.shape[1]
    columns: dict[str, list] = {name: [] for name in ("window", *FORECAST_SCHEMA)}
    for key, values in zip(keys, quantiles, strict=True):
        times = forecast_times(key.symbol, key.as_of, horizon)
        columns["window"].extend([key.window] * horizon)
        columns["symbol"].extend([key.symbol] * horizon)
        columns["as_of"].extend([key.as_of] * horizon)
        columns["step"].extend(range(1, horizon + 1))
        columns["ts"].extend(times)
        columns["p10"].extend(values[:, 0].tolist())
        columns["p50"].extend(values[:, 1].tolist())
        columns["p90"].extend(values[:, 2].tolist())
    return pl.DataFrame(columns, schema={"window": pl.Utf8, **FORECAST_SCHEMA})


def forecast_problems(forecasts: pl.DataFrame, horizon: int) -> list[str]:
    """Return what makes a forecast frame unfit to store (empty when it is fine)."""
    problems = []
    counts = forecasts.group_by("window", "symbol").len().sort("window", "symbol")
    short = counts.filter(pl.col("len") != horizon)
    for row in short.iter_rows(named=True):
        problems.append(f"{row['window']}: {row['symbol']}: {row['len']} steps, expected {horizon}")
    values = forecasts.select("p10", "p50", "p90").to_numpy()
    if not np.isfinite(values).all():
        bad = forecasts.filter(~pl.all_horizontal(pl.col("p10", "p50", "p90").is_finite()))
        for row in bad.head(5).iter_rows(named=True):
            problems.append(f"{row['window']}: {row['symbol']}: non-finite quantile at {row['ts']}")
    crossed = forecasts.filter((pl.col("p10") > pl.col("p50")) | (pl.col("p50") > pl.col("p90")))
    for row in crossed.head(5).iter_rows(named=True):
        problems.append(f"{row['window']}: {row['symbol']}: quantiles cross at {row['ts']}")
    return problems
