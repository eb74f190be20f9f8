"""The scoring tables: ``forecast_scores``, ``forecast_losses``, ``forecast_scoring_skips``, ``forecast_scoring_state``.

Migrations ``20260620_forecast_scores.sql`` and ``20260701_forecast_losses.sql`` create them.
This module only moves rows; what they mean is in ``scoring``. Writers call these inside one
transaction that first takes ``lock_scores``, so a run's writes land together or not at all and
two runs of one cadence never interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl
import psycopg
from psycopg import sql

from forecasting_pipeline.storage.ml_predictions import read_predictions_by_id

UTC = pl.Datetime("us", "UTC")

LOSS_COLUMNS = (
    "model_name", "symbol", "as_of", "levels", "realised_at", "n_steps", "mean_pinball", "scaled_abs_error",
    "scaled_rw_abs_error", "n_below_p10", "n_above_p90", "prediction_id", "prediction_created_at",
)
_LOSS_SCHEMA = {
    "model_name": pl.Utf8, "symbol": pl.Utf8, "as_of": UTC, "levels": pl.Int8, "realised_at": UTC,
    "n_steps": pl.Int32, "mean_pinball": pl.Float64, "scaled_abs_error": pl.Float64,
    "scaled_rw_abs_error": pl.Float64, "n_below_p10": pl.Int32, "n_above_p90": pl.Int32,
    "prediction_id": pl.Int64, "prediction_created_at": UTC,
}
SKIP_COLUMNS = ("prediction_id", "prediction_created_at", "model_name", "symbol", "as_of", "reason")

SCORE_COLUMNS = (
    "model_name", "symbol", "step", "levels", "n", "pinball_p10", "pinball_p50", "pinball_p90",
    "mean_pinball", "n_below_p10", "n_above_p90", "coverage_p10_p90", "below_p10_rate",
    "above_p90_rate", "scaled_mae", "scaled_rw_mae", "relative_mae", "first_as_of", "last_as_of",
)
SUM_COLUMNS = (
    "sum_pinball_p10", "sum_pinball_p50", "sum_pinball_p90", "sum_mean_pinball", "sum_scaled_abs_error",
    "sum_scaled_rw_abs_error",
)
_SCORE_SCHEMA = {
    **{c: pl.Float64 for c in (*SCORE_COLUMNS, *SUM_COLUMNS)},
    "model_name": pl.Utf8, "symbol": pl.Utf8, "step": pl.Int32, "levels": pl.Int8, "n": pl.Int64,
    "n_below_p10": pl.Int64, "n_above_p90": pl.Int64, "first_as_of": UTC, "last_as_of": UTC,
    "scored_through": UTC,
}
_WRITTEN_SCORE_COLUMNS = (*SCORE_COLUMNS, *SUM_COLUMNS)
_UPSERT_SCORES = sql.SQL(
    "INSERT INTO forecast_scores (timeframe, {columns}, scored_through, scored_at) VALUES (%s, {values}, %s, now()) "
    "ON CONFLICT (timeframe, model_name, symbol, step, levels) DO UPDATE SET {updates}, "
    "scored_through = EXCLUDED.scored_through, scored_at = now()"
).format(
    columns=sql.SQL(", ").join(map(sql.Identifier, _WRITTEN_SCORE_COLUMNS)),
    values=sql.SQL(", ").join(sql.Placeholder() * len(_WRITTEN_SCORE_COLUMNS)),
    updates=sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in _WRITTEN_SCORE_COLUMNS[4:]
    ),
)

_UNSCORED_ROWS = """
SELECT p.id, p.symbol, p.model_name, p.created_at FROM ml_predictions p
WHERE p.timeframe = %(timeframe)s AND (%(symbols)s::text[] IS NULL OR p.symbol = ANY(%(symbols)s::text[]))
  AND NOT EXISTS (SELECT 1 FROM forecast_losses l
                  WHERE l.prediction_id = p.id AND l.prediction_created_at = p.created_at)
  AND NOT EXISTS (SELECT 1 FROM forecast_scoring_skips k
                  WHERE k.prediction_id = p.id AND k.prediction_created_at = p.created_at)
ORDER BY p.symbol, p.id
"""
# A scored row whose ml_predictions row is gone or was rewritten (a new created_at).
_STALE_SYMBOLS = """
SELECT DISTINCT l.symbol FROM forecast_losses l
WHERE l.timeframe = %(timeframe)s AND l.prediction_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ml_predictions p
                  WHERE p.id = l.prediction_id AND p.created_at = l.prediction_created_at)
ORDER BY l.symbol
"""
_DELETE_STALE_SKIPS = """
DELETE FROM forecast_scoring_skips k
WHERE k.timeframe = %(timeframe)s
  AND NOT EXISTS (SELECT 1 FROM ml_predictions p
                  WHERE p.id = k.prediction_id AND p.created_at = k.prediction_created_at)
"""


@dataclass(frozen=True)
class ScoringState:
    """What the scores of a cadence were last brought up to, and with which method."""

    scored_through: datetime
    vol_window: int
    method_version: int
    rebuilt_at: datetime


def lock_scores(conn: psycopg.Connection, timeframe: str) -> None:
    """Wait for any other writer of this cadence's scores; released when the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"forecast_scores:{timeframe}",))


def read_state(conn: psycopg.Connection, timeframe: str) -> ScoringState | None:
    row = conn.execute(
        "SELECT scored_through, vol_window, method_version, rebuilt_at FROM forecast_scoring_state WHERE timeframe = %s",
        (timeframe,),
    ).fetchone()
    return ScoringState(*row) if row else None


def write_state(conn: psycopg.Connection, timeframe: str, state: ScoringState) -> None:
    conn.execute(
        "INSERT INTO forecast_scoring_state (timeframe, scored_through, vol_window, method_version, rebuilt_at) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (timeframe) DO UPDATE SET scored_through = EXCLUDED.scored_through, "
        "vol_window = EXCLUDED.vol_window, method_version = EXCLUDED.method_version, "
        "rebuilt_at = EXCLUDED.rebuilt_at, updated_at = now()",
        (timeframe, state.scored_through, state.vol_window, state.method_version, state.rebuilt_at),
    )
    conn.execute("UPDATE forecast_scores SET scored_through = %s WHERE timeframe = %s",
                 (state.scored_through, timeframe))


def delete_scores(conn: psycopg.Connection, timeframe: str, symbols: Sequence[str] | None = None) -> None:
    """Remove the cadence's scores, losses and skips, of every symbol or only of ``symbols``."""
    for table in ("forecast_scores", "forecast_losses", "forecast_scoring_skips"):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE timeframe = %s AND (%s::text[] IS NULL OR symbol = ANY(%s::text[]))").format(
                sql.Identifier(table)
            ),
            (timeframe, None if symbols is None else list(symbols), None if symbols is None else list(symbols)),
        )


def stale_symbols(conn: psycopg.Connection, timeframe: str) -> list[str]:
    """Symbols with a scored forecast whose ``ml_predictions`` row was since rewritten or deleted."""
    return [s for (s,) in conn.execute(_STALE_SYMBOLS, {"timeframe": timeframe}).fetchall()]


def forget_stale_skips(conn: psycopg.Connection, timeframe: str) -> int:
    """Drop the skips of rows since rewritten or deleted, so that a rewritten row is looked at again."""
    return conn.execute(_DELETE_STALE_SKIPS, {"timeframe": timeframe}).rowcount


def unscored_rows(conn: psycopg.Connection, timeframe: str, symbols: Sequence[str] | None = None) -> pl.DataFrame:
    """``id``, ``symbol``, ``model_name``, ``created_at`` of every ``ml_predictions`` row of the cadence (of
    ``symbols``) neither scored nor skipped as it stands."""
    params = {"timeframe": timeframe, "symbols": None if symbols is None else list(symbols)}
    rows = conn.execute(_UNSCORED_ROWS, params).fetchall()
    schema = {"id": pl.Int64, "symbol": pl.Utf8, "model_name": pl.Utf8, "created_at": UTC}
    return pl.DataFrame(rows, schema=schema, orient="row")


def read_stored_forecasts(conn: psycopg.Connection, ids: Sequence[int]) -> pl.DataFrame:
    """The steps of the ``ml_predictions`` rows ``ids`` in ``scoring.forecasts.STORED_SCHEMA``."""
    frame = read_predictions_by_id(conn, ids)
    return frame.select(
        pl.col("id").alias("prediction_id"), pl.col("created_at").alias("prediction_created_at"),
        "model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90",
    )


def _copy_rows(conn: psycopg.Connection, table: str, columns: Sequence[str], rows) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def insert_losses(conn: psycopg.Connection, timeframe: str, losses: pl.DataFrame) -> int:
    """Insert per-forecast loss rows (``LOSS_COLUMNS``; ``prediction_*`` null for baselines)."""
    _copy_rows(conn, "forecast_losses", ("timeframe", *LOSS_COLUMNS),
               ((timeframe, *row) for row in losses.select(LOSS_COLUMNS).iter_rows()))
    return losses.height


def refresh_statistics(conn: psycopg.Connection) -> None:
    """Let the planner see the scoring tables' new size after a large write (before autovacuum gets to it)."""
    conn.execute("ANALYZE forecast_losses")
    conn.execute("ANALYZE forecast_scoring_skips")


def insert_skips(conn: psycopg.Connection, timeframe: str, skips: pl.DataFrame) -> int:
    """Record rows left unscored for good (``SKIP_COLUMNS``)."""
    _copy_rows(conn, "forecast_scoring_skips", ("timeframe", *SKIP_COLUMNS),
               ((timeframe, *row) for row in skips.select(SKIP_COLUMNS).iter_rows()))
    return skips.height


def read_loss_keys(conn: psycopg.Connection, timeframe: str, symbols: Sequence[str], as_of_from: datetime) -> pl.DataFrame:
    """``model_name``, ``symbol``, ``as_of``, ``levels``, ``n_steps``, ``realised_at`` of the stored losses from ``as_of_from``."""
    rows = conn.execute(
        "SELECT model_name, symbol, as_of, levels, n_steps, realised_at FROM forecast_losses "
        "WHERE timeframe = %s AND symbol = ANY(%s) AND as_of >= %s",
        (timeframe, list(symbols), as_of_from),
    ).fetchall()
    schema = {"model_name": pl.Utf8, "symbol": pl.Utf8, "as_of": UTC, "levels": pl.Int8, "n_steps": pl.Int32,
              "realised_at": UTC}
    return pl.DataFrame(rows, schema=schema, orient="row")


def read_losses(
    conn: psycopg.Connection,
    timeframe: str,
    model_name: str | None = None,
    realised_by: datetime | None = None,
    as_of_from: datetime | None = None,
    columns: Sequence[str] = LOSS_COLUMNS,
    symbols: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Stored per-forecast losses (``columns`` of ``LOSS_COLUMNS``), optionally of one model or of ``models``,
    of ``symbols``, realised by an instant, from an ``as_of``; sorted by model, symbol, ``as_of``.

    Naming both ``models`` and ``symbols`` lets the primary key (timeframe, model_name, symbol, ...)
    find the rows, rather than a scan of the cadence's whole history."""
    schema = {c: _LOSS_SCHEMA[c] for c in columns}
    # Instants as epoch microseconds, exact, as ml_predictions reads them.
    selected = sql.SQL(", ").join(
        sql.SQL("(extract(epoch FROM {0}) * 1000000)::bigint").format(sql.Identifier(c)) if t == UTC
        else sql.Identifier(c)
        for c, t in schema.items()
    )
    query = sql.SQL(
        "COPY (SELECT {} FROM forecast_losses WHERE timeframe = %(timeframe)s "
        "AND (%(model)s::text IS NULL OR model_name = %(model)s) "
        "AND (%(by)s::timestamptz IS NULL OR realised_at <= %(by)s) "
        "AND (%(from)s::timestamptz IS NULL OR as_of >= %(from)s) "
        "AND (%(symbols)s::text[] IS NULL OR symbol = ANY(%(symbols)s::text[])) "
        "AND (%(models)s::text[] IS NULL OR model_name = ANY(%(models)s::text[])) "
        "ORDER BY model_name, symbol, as_of, levels) TO STDOUT (FORMAT csv)"
    ).format(selected)
    params = {"timeframe": timeframe, "model": model_name, "by": realised_by, "from": as_of_from,
              "symbols": None if symbols is None else list(symbols), "models": None if models is None else list(models)}
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        data = b"".join(copy)
    instants = [c for c, t in schema.items() if t == UTC]
    raw_schema = {c: (pl.Int64 if c in instants else t) for c, t in schema.items()}
    frame = pl.read_csv(data, has_header=False, schema=raw_schema) if data else pl.DataFrame(schema=raw_schema)
    return frame.with_columns(pl.col(instants).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))


def latest_as_of(conn: psycopg.Connection, timeframe: str) -> datetime | None:
    """The newest ``as_of`` among the stored losses of the cadence."""
    return conn.execute("SELECT max(as_of) FROM forecast_losses WHERE timeframe = %s", (timeframe,)).fetchone()[0]


def loss_counts(conn: psycopg.Connection, timeframe: str) -> dict[str, int]:
    """Scored forecasts per model (baselines included), over all history."""
    rows = conn.execute(
        "SELECT model_name, count(*) FROM forecast_losses WHERE timeframe = %s GROUP BY model_name ORDER BY model_name",
        (timeframe,),
    ).fetchall()
    return {name: int(n) for name, n in rows}


def skip_counts(conn: psycopg.Connection, timeframe: str) -> dict[str, dict[str, int]]:
    """Rows left unscored for good, per reason and model."""
    rows = conn.execute(
        "SELECT reason, model_name, count(*) FROM forecast_scoring_skips WHERE timeframe = %s "
        "GROUP BY reason, model_name ORDER BY reason, model_name",
        (timeframe,),
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for reason, model, n in rows:
        out.setdefault(reason, {})[model] = int(n)
    return out


def read_scores(conn: psycopg.Connection, timeframe: str, with_sums: bool = False) -> pl.DataFrame:
    """The stored scores of ``timeframe`` (``SCORE_COLUMNS`` and ``scored_through``; the sums too if asked), sorted."""
    names = (*SCORE_COLUMNS, "scored_through", *(SUM_COLUMNS if with_sums else ()))
    cur = conn.execute(
        sql.SQL(
            "SELECT {} FROM forecast_scores WHERE timeframe = %s ORDER BY model_name, symbol, step, levels"
        ).format(sql.SQL(", ").join(map(sql.Identifier, names))),
        (timeframe,),
    )
    return pl.DataFrame(cur.fetchall(), schema={c: _SCORE_SCHEMA[c] for c in names}, orient="row")


def write_scores(conn: psycopg.Connection, timeframe: str, scores: pl.DataFrame, scored_through: datetime) -> int:
    """Insert or replace score rows (``SCORE_COLUMNS`` and the sums) by (model_name, symbol, step, levels)."""
    params = [(timeframe, *row, scored_through) for row in scores.select(_WRITTEN_SCORE_COLUMNS).iter_rows()]
    with conn.cursor() as cur:
        cur.executemany(_UPSERT_SCORES, params)
    return len(params)
