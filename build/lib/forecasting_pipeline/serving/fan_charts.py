"""The forecast fan a materialisation attaches to its metadata: one window, Chronos-2 beside Kronos.

This module owns choosing what the chart shows: the last window of a run (a backfill renders
only that one, so a 30-window run still draws one chart), its history, and the Kronos forecast
that matches each instrument's forecast origin, read from ``ml_predictions``. Drawing is
:mod:`forecasting_pipeline.serving.plots`; this module has no Dagster in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import polars as pl
import psycopg

from forecasting_pipeline.serving.plots import forecast_fan_png, png_markdown
from forecasting_pipeline.storage.ml_predictions import GUARDED_STEPS, KRONOS_MODEL_NAME

logger = logging.getLogger(__name__)

#: How long after a Chronos-2 forecast's ``as_of`` a Kronos forecast still counts as made from
#: the same information: one bar. Kronos rows carry no ``as_of``, so their ``created_at`` is
#: their origin; a Kronos run that started before the next bar closed saw the same bars.
OVERLAY_TOLERANCE = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}

#: History drawn before each forecast, in multiples of its horizon.
HISTORY_HORIZONS = 4

# Per symbol, the newest Kronos row whose origin lies in [as_of, as_of + tolerance]; the
# lateral LIMIT 1 walks idx_ml_pred_latest (model_name, timeframe, symbol, origin DESC, created_at DESC).
# Steps are read guarded (ml_predictions.GUARDED_STEPS; 23 rows, so the cost is nothing): a malformed
# Kronos step is left out of the picture instead of failing the run whose rows are already committed.
_KRONOS_OVERLAY = f"""
SELECT symbol, ts, p50 FROM (
    SELECT o.symbol, o.as_of, {GUARDED_STEPS.ts} AS ts, {GUARDED_STEPS.p50} AS p50
    FROM unnest(%(symbols)s::text[], %(origins)s::timestamptz[]) AS o(symbol, as_of)
    CROSS JOIN LATERAL (
        SELECT m.predictions
        FROM ml_predictions m
        WHERE m.model_name = %(model)s AND m.timeframe = %(timeframe)s AND m.symbol = o.symbol
          AND COALESCE(m.as_of, m.created_at) >= o.as_of
          AND COALESCE(m.as_of, m.created_at) <= o.as_of + %(tolerance)s
        ORDER BY COALESCE(m.as_of, m.created_at) DESC, m.created_at DESC
        LIMIT 1
    ) k
    CROSS JOIN LATERAL {GUARDED_STEPS.steps_of.format("k.predictions")} AS s(value)
) steps
WHERE ts > as_of AND p50 IS NOT NULL
ORDER BY symbol, ts
"""


@dataclass(frozen=True)
class FanChart:
    """A rendered fan: the PNG, its markdown for Dagster metadata, and what it shows."""

    window: str
    png: bytes
    markdown: str
    instruments: int
    kronos_instruments: list[str]


def kronos_overlay(conn: psycopg.Connection, timeframe: str, origins: pl.DataFrame) -> pl.DataFrame:
    """Kronos central forecasts from the same origins as ``origins``.

    Parameters
    ----------
    origins
        Columns ``symbol``, ``as_of``: one Chronos-2 forecast origin per symbol.

    Returns
    -------
    polars.DataFrame
        Columns ``symbol``, ``ts``, ``p50`` (Kronos's ``close``), only steps after ``as_of``;
        no rows for a symbol without a matching Kronos forecast.
    """
    rows = conn.execute(
        _KRONOS_OVERLAY,
        {
            "symbols": origins["symbol"].to_list(),
            "origins": origins["as_of"].to_list(),
            "model": KRONOS_MODEL_NAME,
            "timeframe": timeframe,
            "tolerance": OVERLAY_TOLERANCE[timeframe],
        },
    ).fetchall()
    schema = {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "p50": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def window_fan_chart(
    conn: psycopg.Connection,
    timeframe: str,
    forecasts: dict[str, pl.DataFrame],
    history: dict[str, pl.DataFrame],
) -> FanChart:
    """Render the fan of the last window in ``forecasts``, with Kronos overlaid where it matches.

    Parameters
    ----------
    forecasts
        Window key -> long forecast rows (``symbol, as_of, step, ts, p10, p50, p90``).
    history
        Window key -> bars or covariates with at least ``symbol, ts, close``.
    """
    if not forecasts:
        raise ValueError("forecasts holds no window: there is nothing to draw")
    window = max(forecasts)
    frame = forecasts[window]
    origins = frame.group_by("symbol").agg(pl.col("as_of").max()).sort("symbol")
    overlay = kronos_overlay(conn, timeframe, origins)
    kronos_symbols = sorted(overlay["symbol"].unique().to_list())
    if not kronos_symbols:
        # Said in the fan's own caption too ("Kronos overlaid on 0"), so only at debug level here.
        logger.debug("no Kronos %s forecast matches window %s; the fan shows Chronos-2 only", timeframe, window)
    title = f"Chronos-2 {timeframe}, window {window}" + (" vs Kronos" if kronos_symbols else "")
    bars = history.get(window)
    if bars is None:
        bars = pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "close": pl.Float64})
    # Four horizons of history: enough to judge the fan against recent moves, short enough that
    # the forecast is not squeezed into the panel's right edge.
    png = forecast_fan_png(bars, frame, overlay, history_bars=HISTORY_HORIZONS * int(frame["step"].max()), title=title)
    markdown = (
        f"Window {window}: {origins.height} instruments, Kronos overlaid on {len(kronos_symbols)}.\n\n"
        + png_markdown(png, f"Forecast fan {timeframe} {window}")
    )
    return FanChart(window, png, markdown, origins.height, kronos_symbols)


def fan_chart_metadata(
    conn: psycopg.Connection,
    timeframe: str,
    forecasts: dict[str, pl.DataFrame],
    history: dict[str, pl.DataFrame],
) -> dict[str, object]:
    """The fan of the last window as plain metadata values (``forecast_fan`` is markdown).

    Called after the forecasts are committed: a Kronos row the database cannot read (a stored
    date such as 30 February) is reported in ``forecast_fan`` rather than failing the write that
    succeeded. Any other error is a bug and propagates.
    """
    try:
        fan = window_fan_chart(conn, timeframe, forecasts, history)
    except psycopg.Error as exc:
        if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.rollback()
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return {"forecast_fan": f"Not drawn: {reason}"}
    return {
        "forecast_fan": fan.markdown,
        "forecast_fan_window": fan.window,
        "kronos_overlay_instruments": len(fan.kronos_instruments),
    }
