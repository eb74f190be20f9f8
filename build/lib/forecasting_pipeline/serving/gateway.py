"""The gateway's read contract: the latest forecast per symbol and timeframe of one model.

This module owns reads through the SQL function ``latest_ml_predictions(p_model, p_timeframe,
p_symbol)`` (migration ``20260610_latest_prediction_read_path.sql``), the same function the
gateway calls as a Supabase RPC, and the text table the ``forecasting-pipeline latest`` command
prints. The model defaults to ``kronos-base``, as the gateway's does. A model or symbol with no
rows is reported as :class:`UnknownSeriesError` listing what is known, never as a SQL error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from forecasting_pipeline.storage.ml_predictions import KRONOS_MODEL_NAME
from forecasting_pipeline.times import as_utc

#: The model a caller gets when it names none: the gateway's historical behaviour.
DEFAULT_MODEL = KRONOS_MODEL_NAME

_LATEST = """
SELECT symbol, timeframe, model_name, model_version, as_of, created_at, predictions
FROM latest_ml_predictions(p_model => %(model)s, p_timeframe => %(timeframe)s, p_symbol => %(symbol)s)
"""

# Distinct model names by skipping through idx_ml_pred_latest (which leads with model_name): one
# index probe per model instead of a scan of every row, which grows every day.
_KNOWN_MODELS = """
WITH RECURSIVE models (model_name) AS (
    (SELECT model_name FROM ml_predictions ORDER BY model_name LIMIT 1)
    UNION ALL
    SELECT (SELECT m.model_name FROM ml_predictions m WHERE m.model_name > models.model_name
            ORDER BY m.model_name LIMIT 1)
    FROM models WHERE models.model_name IS NOT NULL
)
SELECT model_name FROM models WHERE model_name IS NOT NULL
"""


class UnknownSeriesError(LookupError):
    """No forecast exists for the requested model, timeframe or symbol; the message lists the known ones."""


class ReadPathMissingError(RuntimeError):
    """The database lacks ``latest_ml_predictions``: its migrations have not been applied."""


@dataclass(frozen=True)
class LatestForecast:
    """One row of ``latest_ml_predictions``: a model's newest forecast for one symbol and timeframe.

    ``steps`` is the row's ``predictions`` array as stored: Chronos-2 steps carry
    ``step, ts, p10, p50, p90, close``; Kronos steps carry ``ts, close`` only.
    """

    symbol: str
    timeframe: str
    model_name: str
    model_version: str | None
    as_of: datetime | None
    created_at: datetime
    steps: list[dict]


def latest_forecasts(
    conn: psycopg.Connection,
    model: str = DEFAULT_MODEL,
    timeframe: str | None = None,
    symbol: str | None = None,
) -> list[LatestForecast]:
    """Call ``latest_ml_predictions`` as the gateway does; an empty list when nothing matches.

    Raises
    ------
    ReadPathMissingError
        If the function does not exist (migrations not applied).
    """
    try:
        rows = conn.execute(_LATEST, {"model": model, "timeframe": timeframe, "symbol": symbol}).fetchall()
    except psycopg.errors.UndefinedFunction:
        _rollback_if_in_transaction(conn)
        raise ReadPathMissingError(
            "the database has no latest_ml_predictions function: run `forecasting-pipeline migrate` first"
        ) from None
    return [
        LatestForecast(s, tf, m, v, as_of, created, json.loads(p) if isinstance(p, (str, bytes)) else p)
        for s, tf, m, v, as_of, created, p in rows
    ]


def known_models(conn: psycopg.Connection) -> list[str]:
    """Model names that have at least one row in ``ml_predictions``, sorted."""
    return [name for (name,) in conn.execute(_KNOWN_MODELS).fetchall()]


def latest_forecast(
    conn: psycopg.Connection, symbol: str, timeframe: str, model: str = DEFAULT_MODEL
) -> LatestForecast:
    """The latest forecast of ``model`` for ``symbol`` at ``timeframe``.

    Raises
    ------
    UnknownSeriesError
        If the model has no rows (the message lists the known models), or no rows at this
        timeframe, or none for this symbol (the message lists the model's symbols there).
    ReadPathMissingError
        If the migrations have not been applied.
    """
    found = latest_forecasts(conn, model, timeframe, symbol)
    if found:
        return found[0]
    models = known_models(conn)
    if model not in models:
        raise UnknownSeriesError(f"unknown model {model!r}; known models: {_listing(models)}")
    symbols = [f.symbol for f in latest_forecasts(conn, model, timeframe)]
    if not symbols:
        timeframes = sorted({f.timeframe for f in latest_forecasts(conn, model)})
        raise UnknownSeriesError(
            f"model {model!r} has no {timeframe!r} forecasts; its timeframes: {_listing(timeframes)}"
        )
    raise UnknownSeriesError(
        f"unknown symbol {symbol!r} for model {model!r} at {timeframe!r}; known symbols: {_listing(symbols)}"
    )


def format_forecast(forecast: LatestForecast) -> str:
    """A readable text table of one forecast: a header, then one line per step.

    Central-only steps (Kronos's ``{"ts", "close"}``) show their close as p50 and dashes for
    the band.
    """
    as_of = _utc(forecast.as_of) if forecast.as_of else "- (not recorded)"
    lines = [
        f"{forecast.symbol} {forecast.timeframe}  model {forecast.model_name}"
        + (f" ({forecast.model_version})" if forecast.model_version else ""),
        f"as_of {as_of}   created_at {_utc(forecast.created_at)}",
        f"{'step':>4}  {'ts (UTC)':<16}  {'p10':>12}  {'p50':>12}  {'p90':>12}",
    ]
    if not isinstance(forecast.steps, list):
        # Another writer's row, shown as stored rather than failing the read.
        return "\n".join(lines[:2] + [f"predictions is not a list of steps: {json.dumps(forecast.steps)[:200]}"])
    for index, step in enumerate(forecast.steps, start=1):
        if not isinstance(step, dict):
            lines.append(f"{index:>4}  malformed step: {json.dumps(step)[:200]}")
            continue
        central = step.get("p50", step.get("close"))
        lines.append(
            f"{step.get('step', index):>4}  {_step_time(step.get('ts')):<16}  "
            f"{_number(step.get('p10')):>12}  {_number(central):>12}  {_number(step.get('p90')):>12}"
        )
    return "\n".join(lines)


def _number(value) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value)[:12]


def _step_time(value) -> str:
    # Kronos writes its own ts strings; show any that is not ISO 8601 as stored rather than fail.
    if not value:
        return "-"
    try:
        return _utc(datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def _utc(moment: datetime) -> str:
    # A naive step time is read as UTC, the convention of every ts in ml_predictions.
    return as_utc(moment).strftime("%Y-%m-%d %H:%M")


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(none: ml_predictions is empty)"


def _rollback_if_in_transaction(conn: psycopg.Connection) -> None:
    # A failed statement in a non-autocommit connection leaves it aborted; undo so the caller can go on.
    if not conn.autocommit:
        conn.rollback()
