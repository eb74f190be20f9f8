"""Rows of ``ml_predictions``: the forecast row contract, idempotent upserts per window, and reads.

One row per forecast: ``symbol``, ``timeframe``, ``model_name``, ``model_version``, ``as_of`` (close
time of the last bar used), ``created_at`` and ``predictions``, a JSONB array with one object per
horizon step: ``{"step", "ts", "p10", "p50", "p90", "close"}``. ``close`` repeats p50 so that a
reader of Kronos's ``{"ts", "close"}`` steps reads a Chronos-2 row unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl
import psycopg

logger = logging.getLogger(__name__)

MODEL_NAME = "chronos-2"
KRONOS_MODEL_NAME = "kronos-base"
ENSEMBLE_MODEL_NAME = "ensemble"
#: A fine-tuned challenger's shadow forecasts: scored beside the champion's, never served as ``chronos-2``.
CHALLENGER_MODEL_NAME = "chronos-2-challenger"
#: The models this pipeline writes. Kronos's rows are another system's and are never written here.
WRITABLE_MODELS = (MODEL_NAME, ENSEMBLE_MODEL_NAME, CHALLENGER_MODEL_NAME)
TIMEFRAMES = ("1h", "1d")

# A run's rows are copied into a temporary table, then upserted by one statement: COPY carries
# thousands of JSON documents at a fraction of the cost of the same values as query parameters.
_INCOMING = """
CREATE TEMP TABLE incoming_predictions (
    symbol TEXT, timeframe TEXT, model_name TEXT, model_version TEXT, as_of TIMESTAMPTZ, predictions TEXT
) ON COMMIT DROP
"""
_UPSERT = """
INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, predictions, created_at)
SELECT symbol, timeframe, model_name, model_version, as_of, predictions::jsonb, now() FROM incoming_predictions
ON CONFLICT (symbol, timeframe, model_name, as_of)
DO UPDATE SET predictions = EXCLUDED.predictions,
              model_version = EXCLUDED.model_version,
              created_at = EXCLUDED.created_at
"""


@dataclass(frozen=True)
class PredictionRow:
    symbol: str
    timeframe: str
    model_name: str
    model_version: str
    as_of: datetime
    predictions: list[dict]

    def params(self) -> tuple:
        return (self.symbol, self.timeframe, self.model_name, self.model_version, self.as_of,
                json.dumps(self.predictions))


def prediction_rows(
    forecasts: pl.DataFrame, timeframe: str, model_version: str, model_name: str = MODEL_NAME
) -> list[PredictionRow]:
    """Group long forecast rows (symbol, as_of, step, ts, p10, p50, p90) into one row per forecast of ``model_name``."""
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe must be one of {TIMEFRAMES}, got {timeframe!r}")
    steps_of: dict[tuple[str, datetime], list[dict]] = {}
    ordered = forecasts.sort("symbol", "as_of", "step").select("symbol", "as_of", "step", "ts", "p10", "p50", "p90")
    for symbol, as_of, s, t, lo, mid, hi in ordered.iter_rows():
        steps_of.setdefault((symbol, as_of), []).append(
            {"step": s, "ts": t.isoformat(), "p10": lo, "p50": mid, "p90": hi, "close": mid}
        )
    return [
        PredictionRow(symbol, timeframe, model_name, model_version, as_of, steps)
        for (symbol, as_of), steps in steps_of.items()
    ]


@dataclass(frozen=True)
class EncodedRow:
    """A ``PredictionRow`` whose predictions are already the JSON text stored (``encoded_rows``)."""

    symbol: str
    timeframe: str
    model_name: str
    model_version: str
    as_of: datetime
    predictions_json: str

    def params(self) -> tuple:
        return (self.symbol, self.timeframe, self.model_name, self.model_version, self.as_of, self.predictions_json)


def _json_number(column: str) -> pl.Expr:
    # polars writes a float's shortest round-trip digits, as json.dumps does (NaN as NaN, None as
    # null); Python writes an exponent with two digits at least (1e-07, not 1e-7).
    return pl.col(column).cast(pl.String).str.replace(r"e([+-])(\d)$", "e${1}0${2}").fill_null("null")


def _json_instant(column: str) -> pl.Expr:
    # datetime.isoformat: seconds, then microseconds only when there are any, then the UTC offset.
    ts = pl.col(column)
    return pl.when(ts.dt.microsecond() == 0).then(ts.dt.to_string("%Y-%m-%dT%H:%M:%S%:z")).otherwise(
        ts.dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z")
    )


def encoded_rows(
    forecasts: pl.DataFrame, timeframe: str, model_version: str, model_name: str = MODEL_NAME
) -> list[EncodedRow]:
    """``prediction_rows`` with each row's steps encoded as JSON text column-wise, for a run's thousands of rows.

    The text is what ``json.dumps`` makes of ``prediction_rows``'s steps, character for character.
    """
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe must be one of {TIMEFRAMES}, got {timeframe!r}")
    return [
        EncodedRow(symbol, timeframe, model_name, model_version, as_of, text)
        for symbol, as_of, text in _encoded(forecasts, ()).iter_rows()
    ]


def _encoded(forecasts: pl.DataFrame, by: tuple[str, ...]) -> pl.DataFrame:
    """``by`` columns, symbol, as_of and the JSON text of that forecast's steps, one row per forecast, in that order."""
    if forecasts["ts"].null_count():
        raise ValueError(f"forecast steps without a time (ts): {forecasts.filter(pl.col('ts').is_null()).head(3)}")
    step = pl.concat_str(
        pl.lit('{"step": '), pl.col("step").cast(pl.String), pl.lit(', "ts": "'), _json_instant("ts"),
        pl.lit('", "p10": '), _json_number("p10"), pl.lit(', "p50": '), _json_number("p50"),
        pl.lit(', "p90": '), _json_number("p90"), pl.lit(', "close": '), _json_number("p50"), pl.lit("}"),
    )
    keys = [*by, "symbol", "as_of"]
    return (
        forecasts.sort(*keys, "step")
        .group_by(keys, maintain_order=True)
        .agg(pl.concat_str(pl.lit("["), step.str.join(", "), pl.lit("]")).alias("predictions"))
    )


def upsert_window(
    conn: psycopg.Connection, rows: Sequence[PredictionRow | EncodedRow], window: str | None = None, model_name: str = MODEL_NAME
) -> int:
    """Write one window's rows of ``model_name`` in one transaction: all of them, or none if anything fails.

    The window then holds exactly this set: rows are upserted on their key (symbol, timeframe,
    model_name, as_of), and a row an earlier run of ``window`` wrote that this set lacks (an
    instrument left out this time) is deleted in the same transaction, unless another window's
    latest run wrote it too (``ml_prediction_windows``). ``model_name`` must be one this pipeline
    writes (``WRITABLE_MODELS``: ``chronos-2``, the ensemble's writer's ``ensemble``, or the shadow writer's
    ``chronos-2-challenger``), and rows of
    any other model are refused, so this never writes or deletes Kronos's rows. An empty ``rows``
    changes nothing: a run with nothing to write for a window leaves the window as it was.

    Two writers of the same window (a schedule tick and a manual run) are serialised by a
    transaction-level advisory lock on (model, timeframe, ``window``), or on (model, timeframe)
    when ``window`` is None: the second waits for the first to commit and then replaces its set,
    so the window ends with exactly one run's set, never a mix. The lock is released with the
    transaction, also when the connection dies mid-write (and the transaction rolls back).
    ``window`` None (rows of no window: tools and tests) only upserts.
    """
    return sum(upsert_windows(conn, {window: rows}, model_name).values())


def upsert_windows(
    conn: psycopg.Connection, rows_of: Mapping[str | None, Sequence[PredictionRow | EncodedRow]],
    model_name: str = MODEL_NAME,
) -> dict[str | None, int]:
    """Write several windows' rows in one transaction (see ``upsert_window``): all windows, or none; rows per window.

    Inside a caller's transaction this is a savepoint of it, so the caller can write more (the
    ensemble's weights) in the same commit.
    """
    return replace_windows(conn, rows_of, model_name).written


@dataclass(frozen=True)
class WindowsWritten:
    """What ``replace_windows`` did: rows written per window, and the rows it deleted as (symbol, timeframe, as_of)."""

    written: dict[str | None, int]
    removed: list[tuple[str, str, datetime]]


def replace_windows(
    conn: psycopg.Connection, rows_of: Mapping[str | None, Sequence[PredictionRow | EncodedRow]],
    model_name: str = MODEL_NAME,
) -> WindowsWritten:
    """``upsert_windows``, also saying which rows left: those no window's latest run claims any more."""
    if model_name not in WRITABLE_MODELS:
        raise ValueError(f"refusing to write model {model_name!r}: this pipeline writes only {list(WRITABLE_MODELS)}")
    rows = [row for window_rows in rows_of.values() for row in window_rows]
    foreign = sorted({row.model_name for row in rows if row.model_name != model_name})
    if foreign:
        raise ValueError(f"refusing to write rows of model(s) {foreign}: this writer writes only {model_name!r}")
    # Sorted, so two writers of overlapping windows take the locks in one order (no deadlock).
    locks = sorted({
        window_lock_name(row.timeframe, window, model_name) for window, window_rows in rows_of.items() for row in window_rows
    })
    removed: list[tuple[str, str, datetime]] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(name, 0)) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS lock(name, position) ORDER BY position",
            (locks,),
        )
        if rows:
            # Windows that end between two closes (a weekend's) forecast from the same as_of as the
            # window before: one statement may not update a row twice, so the later window's row
            # stands for both, as writing the windows one after the other would leave it.
            latest = {(row.symbol, row.timeframe, row.model_name, row.as_of): row for row in rows}
            cur.execute(_INCOMING)
            with cur.copy("COPY incoming_predictions FROM STDIN") as copy:
                for row in latest.values():
                    copy.write_row(row.params())
            cur.execute(_UPSERT)
        claims = [(window, row.timeframe, row.symbol, row.as_of)
                  for window, window_rows in rows_of.items() if window is not None for row in window_rows]
        if claims:
            removed = _replace_claims(cur, model_name, claims)
    if removed:
        logger.warning(
            "removed %d %s rows that the latest run of their window left out: %s", len(removed), model_name,
            ", ".join(f"{symbol} {timeframe} as_of {as_of.isoformat()}" for symbol, timeframe, as_of in removed[:10]),
        )
    return WindowsWritten({window: len(window_rows) for window, window_rows in rows_of.items()}, removed)


# A window's claims are replaced whole: its old ones are dropped and the new set's inserted. Rows
# of the model that an old claim named and no claim names now are deleted. They are locked first,
# and checked in a statement of its own: under READ COMMITTED that statement sees the claims of
# any writer of another window (sharing the row) that committed while the lock was awaited, and
# one that has not committed yet re-inserts the row after this commit.
_INCOMING_CLAIMS = """
CREATE TEMP TABLE incoming_claims (window_key TEXT, timeframe TEXT, symbol TEXT, as_of TIMESTAMPTZ) ON COMMIT DROP;
CREATE TEMP TABLE released_claims (timeframe TEXT, symbol TEXT, as_of TIMESTAMPTZ) ON COMMIT DROP
"""
_DROP_CLAIMS = """
WITH dropped AS (
    DELETE FROM ml_prediction_windows w
    USING (SELECT DISTINCT window_key, timeframe FROM incoming_claims) k
    WHERE w.model_name = %(model)s AND w.timeframe = k.timeframe AND w.window_key = k.window_key
    RETURNING w.timeframe, w.symbol, w.as_of
)
INSERT INTO released_claims SELECT DISTINCT timeframe, symbol, as_of FROM dropped
"""
_CLAIM = """
INSERT INTO ml_prediction_windows (model_name, timeframe, window_key, symbol, as_of)
SELECT DISTINCT ON (timeframe, window_key, symbol) %(model)s, timeframe, window_key, symbol, as_of FROM incoming_claims
ORDER BY timeframe, window_key, symbol, as_of DESC
"""
_LOCK_RELEASED = """
SELECT p.id FROM ml_predictions p JOIN released_claims r
  ON p.symbol = r.symbol AND p.timeframe = r.timeframe AND p.as_of = r.as_of
WHERE p.model_name = %(model)s
ORDER BY p.id FOR UPDATE OF p
"""
_DELETE_UNCLAIMED = """
DELETE FROM ml_predictions p USING released_claims r
WHERE p.model_name = %(model)s AND p.symbol = r.symbol AND p.timeframe = r.timeframe AND p.as_of = r.as_of
  AND NOT EXISTS (SELECT 1 FROM ml_prediction_windows w WHERE w.model_name = p.model_name
                  AND w.timeframe = p.timeframe AND w.symbol = p.symbol AND w.as_of = p.as_of)
RETURNING p.symbol, p.timeframe, p.as_of
"""


def _replace_claims(cur: psycopg.Cursor, model_name: str, claims: list[tuple]) -> list[tuple[str, str, datetime]]:
    """Make ``claims`` (window, timeframe, symbol, as_of) the whole claim of their windows; delete what nothing claims."""
    params = {"model": model_name}
    cur.execute(_INCOMING_CLAIMS)
    with cur.copy("COPY incoming_claims FROM STDIN") as copy:
        for claim in claims:
            copy.write_row(claim)
    cur.execute(_DROP_CLAIMS, params)
    cur.execute(_CLAIM, params)
    cur.execute(_LOCK_RELEASED, params)
    cur.execute(_DELETE_UNCLAIMED, params)
    return sorted(cur.fetchall())


def write_windows(
    conn: psycopg.Connection, forecasts: Mapping[str, pl.DataFrame], timeframe: str, model_name: str = MODEL_NAME
) -> dict[str, int]:
    """Upsert every window's long forecast rows as rows of ``ml_predictions``, in one transaction; rows per window."""
    return upsert_windows(conn, windows_rows(forecasts, timeframe, model_name), model_name)


def windows_rows(
    forecasts: Mapping[str, pl.DataFrame], timeframe: str, model_name: str = MODEL_NAME
) -> dict[str, list[EncodedRow]]:
    """Each window's long forecast rows (one ``model_version`` per window) as rows of ``ml_predictions``.

    The run's windows are encoded in one pass: a few polars operations for all of them rather than
    for each of hundreds.
    """
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe must be one of {TIMEFRAMES}, got {timeframe!r}")
    columns = ("symbol", "as_of", "step", "ts", "p10", "p50", "p90", "model_version")
    tagged = [frame.select(columns).with_columns(pl.lit(window).alias("window"))
              for window, frame in forecasts.items() if not frame.is_empty()]
    rows_of: dict[str, list[EncodedRow]] = {window: [] for window in forecasts}
    if not tagged:
        return rows_of
    every = pl.concat(tagged, rechunk=False)
    versions = every.group_by("window", maintain_order=True).agg(pl.col("model_version").unique())
    for window, found in versions.iter_rows():
        if len(found) != 1:
            raise ValueError(f"window {window}: forecasts of {len(found)} model versions ({found}); expected one")
    version_of = {window: found[0] for window, found in versions.iter_rows()}
    for window, symbol, as_of, text in _encoded(every, ("window",)).iter_rows():
        rows_of[window].append(EncodedRow(symbol, timeframe, model_name, version_of[window], as_of, text))
    return rows_of


def window_lock_name(timeframe: str, window: str | None, model_name: str = MODEL_NAME) -> str:
    """The text whose hash keys a window's advisory lock (per database)."""
    return f"ml_predictions:{model_name}:{timeframe}" + (f":{window}" if window is not None else "")


# Another system (Kronos) writes rows here too, so a stored step can be malformed: predictions
# that are not a JSON array, a ts that is not an ISO 8601 string, a value that is not a number.
# The plain casts below fail the whole read on such a step; the guarded ones read it as NULLs. The
# guards make reads markedly slower (benchmarks/scoring_scale.py), so reads try the plain query
# first and fall back to the guarded one only when PostgreSQL refuses a value. The pattern admits
# only well-formed dates, with or without a time (a day 30 in February still fails the cast).
_ISO_TS = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?(Z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?)?$"
_DECIMAL = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass(frozen=True)
class StepSql:
    """SQL for reading one step ``s.value`` of a row's predictions: its instant, its values, the rows of steps."""

    ts: str
    p10: str
    p50: str
    p90: str
    steps_of: str  # format with the predictions column


def _number(key: str, guarded: bool) -> str:
    if not guarded:
        return f"(s.value->>'{key}')::float8"
    # A JSON number, or a string holding a decimal; else NULL.
    return (
        f"CASE WHEN jsonb_typeof(s.value->'{key}') = 'number' "
        f"OR (jsonb_typeof(s.value->'{key}') = 'string' AND s.value->>'{key}' ~ '{_DECIMAL}') "
        f"THEN (s.value->>'{key}')::float8 END"
    )


PLAIN_STEPS = StepSql(
    ts="(s.value->>'ts')::timestamptz",
    p10=_number("p10", False), p50=f"COALESCE({_number('p50', False)}, {_number('close', False)})", p90=_number("p90", False),
    steps_of="jsonb_array_elements({0})",
)
GUARDED_STEPS = StepSql(
    ts=f"CASE WHEN jsonb_typeof(s.value->'ts') = 'string' AND s.value->>'ts' ~ '{_ISO_TS}' "
       "THEN (s.value->>'ts')::timestamptz END",
    p10=_number("p10", True), p50=f"COALESCE({_number('p50', True)}, {_number('close', True)})", p90=_number("p90", True),
    # Any JSON but an array (an object, null) yields one all-NULL step, so the row is counted, not lost.
    steps_of="jsonb_array_elements(CASE WHEN jsonb_typeof({0}) = 'array' THEN {0} ELSE '[null]'::jsonb END)",
)


def _read_sql(step: StepSql, where: str, order: str, identity: bool = False) -> str:
    # Read as CSV through COPY, instants as epoch microseconds, and parsed by polars: one Python
    # tuple per forecast step was several times slower and larger (benchmarks/scoring_scale.py);
    # most of the cost left is PostgreSQL expanding the JSONB.
    return f"""
COPY (
    SELECT {"p.id, p.timeframe, " if identity else ""}p.model_name, p.model_version, p.symbol,
           (extract(epoch FROM p.as_of) * 1000000)::bigint,
           (extract(epoch FROM p.created_at) * 1000000)::bigint,
           (s.ordinality)::int,
           (extract(epoch FROM {step.ts}) * 1000000)::bigint,
           {step.p10}, {step.p50}, {step.p90}
    FROM ml_predictions p, {step.steps_of.format("p.predictions")} WITH ORDINALITY AS s(value, ordinality)
    WHERE {where}
    ORDER BY {order}
) TO STDOUT (FORMAT csv)
"""


_FILTERS = """p.timeframe = %(timeframe)s AND p.model_name = %(model)s
      AND (%(symbols)s::text[] IS NULL OR p.symbol = ANY(%(symbols)s::text[]))
      AND (%(from)s::timestamptz IS NULL OR COALESCE(p.as_of, p.created_at) >= %(from)s)
      AND (%(to)s::timestamptz IS NULL OR COALESCE(p.as_of, p.created_at) <= %(to)s)"""
_BY_FILTERS_ORDER = "p.symbol, p.as_of, s.ordinality"
_READ_PLAIN = _read_sql(PLAIN_STEPS, _FILTERS, _BY_FILTERS_ORDER)
_READ_GUARDED = _read_sql(GUARDED_STEPS, _FILTERS, _BY_FILTERS_ORDER)
_READ_BY_ID_PLAIN = _read_sql(PLAIN_STEPS, "p.id = ANY(%(ids)s::bigint[])", "p.id, s.ordinality", identity=True)
_READ_BY_ID_GUARDED = _read_sql(GUARDED_STEPS, "p.id = ANY(%(ids)s::bigint[])", "p.id, s.ordinality", identity=True)
_READ_SCHEMA = {
    "model_name": pl.Utf8, "model_version": pl.Utf8, "symbol": pl.Utf8,
    "as_of": pl.Int64, "created_at": pl.Int64, "step": pl.Int32,
    "ts": pl.Int64, "p10": pl.Float64, "p50": pl.Float64, "p90": pl.Float64,
}
_READ_BY_ID_SCHEMA = {"id": pl.Int64, "timeframe": pl.Utf8, **_READ_SCHEMA}
_INSTANTS = ("as_of", "created_at", "ts")


def _copy_steps(conn: psycopg.Connection, queries: tuple[str, str], params: dict, what: str, schema: dict) -> pl.DataFrame:
    """Run the plain COPY read, or the guarded one when PostgreSQL refuses a stored value; typed instants."""
    plain, guarded = queries
    try:
        # A savepoint when the caller is inside a transaction: a refused value must not abort it.
        with conn.transaction(), conn.cursor() as cur, cur.copy(plain, params) as copy:
            data = b"".join(copy)
    except psycopg.errors.DataError as refused:
        logger.warning("%s forecasts hold a value PostgreSQL refuses (%s); reading them guarded",
                       what, str(refused).splitlines()[0])
        with conn.transaction(), conn.cursor() as cur, cur.copy(guarded, params) as copy:
            data = b"".join(copy)
    frame = pl.read_csv(data, has_header=False, schema=schema) if data else pl.DataFrame(schema=schema)
    return frame.with_columns(pl.col(_INSTANTS).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))


def _without_malformed(frame: pl.DataFrame, model_name: str, timeframe: str) -> pl.DataFrame:
    malformed = frame.filter(pl.col("ts").is_null() | pl.col("p50").is_null())
    if malformed.height:
        # Left out, not guessed at: a step without a time or a central value cannot be scored or drawn.
        examples = malformed.unique(["symbol", "created_at"], maintain_order=True).head(5)
        logger.warning(
            "skipped %d malformed %s %s forecast steps (no ISO 8601 ts, or no numeric p50/close) in %d rows, e.g. %s",
            malformed.height, model_name, timeframe, malformed.select("symbol", "created_at").n_unique(),
            ", ".join(f"{r['symbol']} written {r['created_at'].isoformat()}" for r in examples.iter_rows(named=True)),
        )
    return frame.filter(pl.col("ts").is_not_null() & pl.col("p50").is_not_null())


def read_predictions(
    conn: psycopg.Connection,
    timeframe: str,
    model_name: str = MODEL_NAME,
    symbols: Sequence[str] | None = None,
    as_of_from: datetime | None = None,
    as_of_to: datetime | None = None,
) -> pl.DataFrame:
    """Read stored forecasts back as long rows: model_name, model_version, symbol, as_of, step, ts, p10, p50, p90.

    ``as_of`` bounds are inclusive; a row without ``as_of`` (Kronos) is bounded by its
    ``created_at``. Steps without p10/p90 (central-only models) read as nulls. Malformed steps
    (see ``GUARDED_STEPS``) are left out with a logged warning that counts them.
    """
    params = {"timeframe": timeframe, "model": model_name, "symbols": list(symbols) if symbols else None,
              "from": as_of_from, "to": as_of_to}
    frame = _copy_steps(conn, (_READ_PLAIN, _READ_GUARDED), params, f"{model_name} {timeframe}", _READ_SCHEMA)
    return _without_malformed(frame, model_name, timeframe)


def read_predictions_by_id(conn: psycopg.Connection, ids: Sequence[int]) -> pl.DataFrame:
    """The steps of the stored rows with these ``id``s, any model and timeframe: ``id``, ``timeframe``, then
    ``read_predictions``' columns. Malformed steps are left out as there, with a warning per model and timeframe.
    """
    frame = _copy_steps(conn, (_READ_BY_ID_PLAIN, _READ_BY_ID_GUARDED), {"ids": list(ids)}, "stored",
                        _READ_BY_ID_SCHEMA)
    parts = frame.partition_by("model_name", "timeframe", as_dict=True, maintain_order=True)
    kept = [_without_malformed(part, model, timeframe) for (model, timeframe), part in parts.items()]
    return pl.concat(kept) if kept else frame


def kronos_rows_since(conn: psycopg.Connection, timeframe: str, since: datetime) -> int:
    """Kronos rows of one timeframe written (created or rewritten) at or after ``since``, by the server's clock."""
    return conn.execute(
        "SELECT count(*) FROM ml_predictions WHERE model_name = %s AND timeframe = %s AND created_at >= %s",
        (KRONOS_MODEL_NAME, timeframe, since),
    ).fetchone()[0]
