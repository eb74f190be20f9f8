"""Rows of ``ensemble_weights``: why each ensemble forecast in ``ml_predictions`` is what it is.

Migration ``20260801_ensemble_weights.sql`` creates the table; ``ensemble`` decides what the rows
say. One row per ensemble forecast, under the forecast's own key (timeframe, symbol, as_of).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from forecasting_pipeline.storage.ml_predictions import (
    ENSEMBLE_MODEL_NAME,
    PredictionRow,
    replace_windows,
)

_UPSERT = """
INSERT INTO ensemble_weights (timeframe, symbol, as_of, model_version, weights, missing, details, created_at)
SELECT %s, r.symbol, r.as_of, %s, r.weights::jsonb, r.missing::jsonb, r.details::jsonb, now()
FROM unnest(%s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[]) AS r(symbol, as_of, weights, missing, details)
ON CONFLICT (timeframe, symbol, as_of)
DO UPDATE SET model_version = EXCLUDED.model_version, weights = EXCLUDED.weights, missing = EXCLUDED.missing,
              details = EXCLUDED.details, created_at = EXCLUDED.created_at
"""

# The explanations of ensemble rows that a window's re-run removed (``replace_windows``) go with them.
_DELETE = """
DELETE FROM ensemble_weights e
USING unnest(%s::text[], %s::text[], %s::timestamptz[]) AS r(symbol, timeframe, as_of)
WHERE e.symbol = r.symbol AND e.timeframe = r.timeframe AND e.as_of = r.as_of
"""

_READ = """
SELECT symbol, as_of, model_version, weights, missing, details, created_at FROM ensemble_weights
WHERE timeframe = %(timeframe)s AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s)
  AND (%(from)s::timestamptz IS NULL OR as_of >= %(from)s) AND (%(to)s::timestamptz IS NULL OR as_of <= %(to)s)
ORDER BY symbol, as_of
"""
# The newest rows of one instrument, through the primary key (timeframe, symbol, as_of) read backwards.
_READ_LAST = """
SELECT symbol, as_of, model_version, weights, missing, details, created_at FROM (
    SELECT * FROM ensemble_weights WHERE timeframe = %(timeframe)s AND symbol = %(symbol)s
    ORDER BY as_of DESC LIMIT %(last)s
) newest
ORDER BY as_of
"""


@dataclass(frozen=True)
class WeightsRow:
    """One forecast's explanation: member -> {"location", "band"} weights, member -> reason missing, details."""

    symbol: str
    as_of: datetime
    weights: Mapping[str, object]
    missing: Mapping[str, str]
    details: Mapping[str, object]


def write_ensemble(
    conn: psycopg.Connection,
    timeframe: str,
    model_version: str,
    rows_of: Mapping[str, Sequence[PredictionRow]],
    explanations: Sequence[WeightsRow],
) -> dict[str, int]:
    """Write the ensemble's rows of several windows and their weights in one transaction; rows per window.

    The forecasts go through ``ml_predictions.replace_windows``, which writes ``ensemble`` rows and
    nothing else, and leaves each window with exactly this run's set: an ensemble row that a
    window's re-run no longer makes is deleted, and its weights with it. A forecast and its weights
    are committed together or not at all.
    """
    with conn.transaction():
        done = replace_windows(conn, rows_of, ENSEMBLE_MODEL_NAME)
        written = done.written
        if done.removed:
            symbols, timeframes, as_ofs = (list(column) for column in zip(*done.removed))
            conn.execute(_DELETE, (symbols, timeframes, as_ofs))
        if explanations:
            latest = {(row.symbol, row.as_of): row for row in explanations}
            conn.execute(_UPSERT, (
                timeframe, model_version,
                [r.symbol for r in latest.values()], [r.as_of for r in latest.values()],
                [json.dumps(r.weights) for r in latest.values()], [json.dumps(r.missing) for r in latest.values()],
                [json.dumps(r.details) for r in latest.values()],
            ))
    return {window: n for window, n in written.items() if window is not None}


def read_ensemble_weights(
    conn: psycopg.Connection,
    timeframe: str,
    symbol: str | None = None,
    as_of_from: datetime | None = None,
    as_of_to: datetime | None = None,
) -> list[dict]:
    """Stored explanations, oldest first per symbol: dicts of ``symbol``, ``as_of``, ``model_version``,
    ``weights``, ``missing``, ``details``, ``created_at``. ``as_of`` bounds are inclusive."""
    return _dicts(conn.execute(_READ, {"timeframe": timeframe, "symbol": symbol, "from": as_of_from, "to": as_of_to}))


def read_last_ensemble_weights(conn: psycopg.Connection, timeframe: str, symbol: str, last: int) -> list[dict]:
    """The ``last`` newest explanations of one instrument, oldest first, as ``read_ensemble_weights`` returns them."""
    return _dicts(conn.execute(_READ_LAST, {"timeframe": timeframe, "symbol": symbol, "last": last}))


def _dicts(cursor: psycopg.Cursor) -> list[dict]:
    names = [c.name for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
