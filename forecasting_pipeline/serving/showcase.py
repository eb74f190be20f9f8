"""What the showcase endpoint and the dashboard read: latest forecasts, the last bars, and each model's scores.

Forecasts are read through the gateway's SQL function (``gateway.latest_forecasts``), so a caller
that names no model gets exactly the rows the gateway serves today. Scores come from the
``forecast_scores`` table through ``read_scores``, used in this module only. Every value is made
JSON-ready here (ISO 8601 times, plain floats), so the HTTP layer only forwards it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import polars as pl
import psycopg

from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.calendars import last_bar_close
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.serving.gateway import LatestForecast, latest_forecasts
from forecasting_pipeline.storage.forecast_scores import read_scores

# The columns of latest_ml_predictions, in its order: the gateway's row shape.
ROW_COLUMNS = ("symbol", "timeframe", "model_name", "model_version", "as_of", "created_at", "predictions")


def latest_rows(conn: psycopg.Connection, model: str, timeframe: str | None, symbol: str | None) -> list[dict]:
    """The latest forecast per symbol and timeframe of ``model``, as the function's rows, JSON-ready."""
    return [_row(forecast) for forecast in latest_forecasts(conn, model, timeframe, symbol)]


def recent_bars(source: BarSource, instrument: Instrument, cadence: Cadence, n: int, now: datetime) -> list[dict]:
    """The last ``n`` bars of an instrument up to its newest closed bar at ``now``; ValueError if unreadable."""
    end = last_bar_close(instrument.calendar, cadence.name, now)
    bars, errors = source.bars([instrument], cadence.name, end, n)
    if instrument.symbol in errors:
        raise ValueError(errors[instrument.symbol])
    return [
        {"ts": row["ts"].isoformat(), **{c: row[c] for c in ("open", "high", "low", "close", "volume")}}
        for row in bars.sort("ts").iter_rows(named=True)
    ]


def model_scores(conn: psycopg.Connection, timeframe: str, symbol: str) -> list[dict]:
    """Each model's stored scores for one instrument, pooled over the horizon's steps.

    One entry per model and number of levels scored (3: p10/p50/p90; 1: a central forecast only),
    with the scaled mean pinball loss, the p10-p90 coverage and the MAE relative to the random walk,
    each the mean over steps weighted by the forecasts scored at that step. A ``levels = 1`` pinball
    is half the scaled absolute error, not comparable with a banded model's (docs/scores.md).
    """
    scores = read_scores(conn, timeframe).filter(pl.col("symbol") == symbol)
    if scores.is_empty():
        return []
    weighted = [
        (pl.col(name) * pl.col("n")).sum() / pl.col("n").filter(pl.col(name).is_not_null()).sum()
        for name in ("mean_pinball", "coverage_p10_p90", "relative_mae")
    ]
    pooled = scores.group_by("model_name", "levels").agg(
        pl.col("n").max().alias("forecasts"), pl.col("step").max().alias("steps"),
        *(w.alias(n) for w, n in zip(weighted, ("mean_pinball", "coverage_p10_p90", "relative_mae"), strict=True)),
    ).sort("model_name", "levels")
    return [{k: _plain(v) for k, v in row.items()} for row in pooled.iter_rows(named=True)]


def instrument_listing(instruments: Sequence[Instrument]) -> list[dict]:
    return [{"symbol": i.symbol, "asset_class": i.asset_class, "calendar": i.calendar} for i in instruments]


def _row(forecast: LatestForecast) -> dict:
    values = (forecast.symbol, forecast.timeframe, forecast.model_name, forecast.model_version,
              forecast.as_of, forecast.created_at, forecast.steps)
    return {name: (v.isoformat() if isinstance(v, datetime) else v) for name, v in zip(ROW_COLUMNS, values, strict=True)}


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
