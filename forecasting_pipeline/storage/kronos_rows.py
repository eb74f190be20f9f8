"""Kronos's rows matched to a forecast origin: the one rule the forecast fan and the ensemble share.

Kronos stores no ``as_of``: its rows carry ``created_at`` and ``{"ts", "close"}`` steps. A Kronos
row belongs to the origin ``as_of`` of a window when it was written within one bar after that
``as_of`` (``as_of <= created_at <= as_of + OVERLAY_TOLERANCE``): a Kronos run that started before
the next bar closed saw the same bars. A caller that knows the instrument's next close after
``as_of`` (the ensemble, from the trading calendar) also requires ``created_at`` before it: on a
daily calendar the next session's Kronos row is written exactly one bar later, and it is another
forecast, made from one more bar. Of the rows that qualify the newest counts. Only its steps after
``as_of`` are read, and malformed steps are left out (``ml_predictions.GUARDED_STEPS``) instead of
failing the reader.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import psycopg

from forecasting_pipeline.storage.ml_predictions import GUARDED_STEPS, KRONOS_MODEL_NAME

#: How long after a forecast's ``as_of`` a Kronos forecast still counts as made from the same
#: information: one bar.
OVERLAY_TOLERANCE = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
TOLERANCE_TEXT = {"1h": "1 hour", "1d": "1 day"}

# Per origin, the newest Kronos row whose origin lies in [as_of, as_of + tolerance]; the lateral
# LIMIT 1 walks idx_ml_pred_latest (model_name, timeframe, symbol, origin DESC, created_at DESC).
# Steps are read guarded: a malformed Kronos step is left out of the result instead of failing the
# reader, whose own rows may already be committed.
_MATCHING = f"""
SELECT symbol, as_of, created_at, ts, p50 FROM (
    SELECT o.symbol, o.as_of, k.created_at, {GUARDED_STEPS.ts} AS ts, {GUARDED_STEPS.p50} AS p50
    FROM unnest(%(symbols)s::text[], %(origins)s::timestamptz[], %(next_closes)s::timestamptz[])
        AS o(symbol, as_of, next_close)
    CROSS JOIN LATERAL (
        SELECT m.predictions, m.created_at
        FROM ml_predictions m
        WHERE m.model_name = %(model)s AND m.timeframe = %(timeframe)s AND m.symbol = o.symbol
          AND COALESCE(m.as_of, m.created_at) >= o.as_of
          AND COALESCE(m.as_of, m.created_at) <= o.as_of + %(tolerance)s
          AND (o.next_close IS NULL OR COALESCE(m.as_of, m.created_at) < o.next_close)
        ORDER BY COALESCE(m.as_of, m.created_at) DESC, m.created_at DESC
        LIMIT 1
    ) k
    CROSS JOIN LATERAL {GUARDED_STEPS.steps_of.format("k.predictions")} AS s(value)
) steps
WHERE ts > as_of AND p50 IS NOT NULL
ORDER BY symbol, as_of, ts
"""

MATCHED_SCHEMA = {
    "symbol": pl.Utf8, "as_of": pl.Datetime("us", "UTC"), "created_at": pl.Datetime("us", "UTC"),
    "ts": pl.Datetime("us", "UTC"), "p50": pl.Float64,
}


def matching_kronos_forecasts(conn: psycopg.Connection, timeframe: str, origins: pl.DataFrame) -> pl.DataFrame:
    """Kronos's central forecasts made from the given origins.

    Parameters
    ----------
    origins
        Columns ``symbol``, ``as_of``: forecast origins (duplicates are read once); optionally
        ``next_close``, the instrument's first bar close after ``as_of``, which a matching row
        must have been written before.

    Returns
    -------
    polars.DataFrame
        ``MATCHED_SCHEMA``: per matched origin (``symbol``, ``as_of``) the matched row's
        ``created_at`` and its well-formed steps after ``as_of`` (``ts``, ``p50`` = Kronos's
        ``close``); no rows for an origin without a matching Kronos forecast.
    """
    if "next_close" not in origins.columns:
        origins = origins.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias("next_close"))
    unique = origins.select("symbol", "as_of", "next_close").unique(["symbol", "as_of"]).sort("symbol", "as_of")
    rows = conn.execute(
        _MATCHING,
        {
            "symbols": unique["symbol"].to_list(),
            "origins": unique["as_of"].to_list(),
            "next_closes": unique["next_close"].to_list(),
            "model": KRONOS_MODEL_NAME,
            "timeframe": timeframe,
            "tolerance": OVERLAY_TOLERANCE[timeframe],
        },
    ).fetchall()
    return pl.DataFrame(rows, schema=MATCHED_SCHEMA, orient="row")
