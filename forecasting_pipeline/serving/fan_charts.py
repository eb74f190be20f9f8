"""The forecast fan a materialisation attaches to its metadata: one window, Chronos-2 beside Kronos.

This module owns choosing what the chart shows: the last window of a run (a backfill renders
only that one, so a 30-window run still draws one chart), its history, and the Kronos forecast
that matches each instrument's forecast origin, read from ``ml_predictions``. Drawing is
:mod:`forecasting_pipeline.serving.plots`; this module has no Dagster in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl
import psycopg

from forecasting_pipeline.serving.plots import forecast_fan_png, png_markdown
from forecasting_pipeline.storage.kronos_rows import matching_kronos_forecasts

logger = logging.getLogger(__name__)

#: History drawn before each forecast, in multiples of its horizon.
HISTORY_HORIZONS = 4


@dataclass(frozen=True)
class FanChart:
    """A rendered fan: the PNG, its markdown for Dagster metadata, and what it shows."""

    window: str
    png: bytes
    markdown: str
    instruments: int
    kronos_instruments: list[str]


def kronos_overlay(conn: psycopg.Connection, timeframe: str, origins: pl.DataFrame) -> pl.DataFrame:
    """Kronos central forecasts from the same origins as ``origins`` (the rule: ``storage.kronos_rows``).

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
    return matching_kronos_forecasts(conn, timeframe, origins).select("symbol", "ts", "p50")


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
