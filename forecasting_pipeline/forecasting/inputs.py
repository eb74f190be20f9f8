"""Chronos-2 quantile forecasts: model inputs from covariates, one batched call, forecast shaping,
and which instruments are left out because their inputs or forecasts cannot be used.

Forecast bars are timestamped from each instrument's trading calendar, not by the model
(``predict_df`` infers a frequency and mislabels gapped exchange-hours bars).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from forecasting_pipeline.market.features import COVARIATE_COLUMNS

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


@dataclass(frozen=True)
class Rejection:
    """An instrument left out of one window's forecasts, and why.

    ``rule``: ``model_input`` (rejected before the model call), or, for the forecast itself,
    ``horizon`` (wrong step count), ``non_finite`` or ``crossing``.
    """

    window: str
    symbol: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.window}: {self.symbol}: {self.message}"


def _input_problem(frame: pl.DataFrame) -> str | None:
    """Why one instrument's context cannot go to the model, or None.

    The model computes in float32. A finite float64 beyond its range (about 3.4e38) becomes
    infinite there, and with chronos-forecasting 2.3.2 one infinite value turns every series of
    the batch into NaN, so the instrument must be left out before the call, not after it.
    """
    for name in ("close", *COVARIATE_COLUMNS):
        wide = frame[name].to_numpy()
        with np.errstate(over="ignore", invalid="ignore"):
            bad = ~np.isfinite(wide.astype(np.float32))
        overflow = bad & np.isfinite(wide)
        if overflow.any():
            i = int(np.argmax(overflow))
            bar = frame["ts"][i].isoformat()
            return f"{name} {wide[i]:.6g} at bar {bar} is beyond float32, in which the model computes (max 3.4e38)"
        if name == "close" and bad.all():
            # The model returns values near 0 for an all-NaN target instead of failing.
            return "the close has no finite value in the context"
        if bad.any():
            return f"non-finite {name} at bar {frame['ts'][int(np.argmax(bad))].isoformat()}"
    return None


def usable_model_inputs(
    covariates: pl.DataFrame, window: str, context_length: int
) -> tuple[list[SeriesKey], list[dict], list[Rejection]]:
    """Build one ``predict_quantiles`` input per instrument from a window's covariates, leaving out unusable ones.

    Returns
    -------
    keys, inputs, rejected
        ``inputs[i]`` is ``{"target": (T,), "past_covariates": {name: (T,)}}`` with T <= context_length,
        float32; ``keys[i]`` says whose it is, with ``as_of`` the close time of its last bar.
        ``rejected`` names each instrument left out and why (``_input_problem``).
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    keys: list[SeriesKey] = []
    inputs: list[dict] = []
    rejected: list[Rejection] = []
    for (symbol,), frame in covariates.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        frame = frame.tail(context_length)
        problem = _input_problem(frame)
        if problem is not None:
            rejected.append(Rejection(window, symbol, "model_input", problem))
            continue
        keys.append(SeriesKey(window, symbol, frame["ts"][-1]))
        inputs.append(
            {
                "target": frame["close"].to_numpy().astype(np.float32),
                "past_covariates": {name: frame[name].to_numpy().astype(np.float32) for name in COVARIATE_COLUMNS},
            }
        )
    return keys, inputs, rejected


def model_inputs(covariates: pl.DataFrame, window: str, context_length: int) -> tuple[list[SeriesKey], list[dict]]:
    """``usable_model_inputs`` for callers that want every instrument or nothing: the first rejection raises ValueError."""
    keys, inputs, rejected = usable_model_inputs(covariates, window, context_length)
    if rejected:
        raise ValueError(str(rejected[0]))
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


def require_some_forecasts(windows: Iterable[str], kept: set[str], rejected: Sequence[Rejection]) -> None:
    """Fail when a window has no instrument left, listing each one's reason (as bar validation does)."""
    for window in windows:
        if window not in kept:
            reasons = "; ".join(f"{r.symbol}: {r.rule}: {r.message}" for r in rejected if r.window == window)
            raise AllForecastsRejectedError(
                f"window {window}: every instrument's forecast was rejected, so nothing is written. {reasons}"
            )


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
