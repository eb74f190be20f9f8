"""How a model's past forecasts fared: its last forecasts beside what happened, and its scores over time.

``past_forecasts`` reads a model's newest stored rows for one instrument (newest origin first, as
``latest_ml_predictions`` orders them) and the bars that realised them, and pairs each step with
the close that came, when it has come. ``rolling_scores`` reads the stored per-forecast losses of
one instrument (``forecast_losses``, written by the scoring runs) and pools them over the last few
forecast dates of each model, with the same formulas as the scoring review's chart
(``scoring.rolling``). Values are JSON-ready: ISO 8601 times, plain floats, None for NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
import psycopg

from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.calendars import last_bar_close
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.scoring.baselines import BASELINE_MODELS
from forecasting_pipeline.scoring.evaluation import DEFAULT_REVIEW_SPAN
from forecasting_pipeline.scoring.frames import UTC
from forecasting_pipeline.scoring.rolling import rolling_coverage, rolling_relative_mae, rolling_scaled_mae
from forecasting_pipeline.serving.gateway import known_models
from forecasting_pipeline.serving.model_catalog import describe_model, kind_order
from forecasting_pipeline.storage.forecast_scores import latest_as_of, read_losses
from forecasting_pipeline.storage.ml_predictions import read_predictions_by_id

#: Most forecasts ``past_forecasts`` draws, and rolling points per model ``rolling_scores`` answers.
MAX_ORIGINS = 20
MAX_POINTS = 250

# The newest rows of one series in the gateway's order; idx_ml_pred_latest serves it as one range.
_NEWEST_ROWS = """
SELECT id FROM ml_predictions
WHERE model_name = %(model)s AND timeframe = %(timeframe)s AND symbol = %(symbol)s
ORDER BY COALESCE(as_of, created_at) DESC, created_at DESC
LIMIT %(n)s
"""
_LOSS_COLUMNS = ("model_name", "symbol", "as_of", "levels", "n_steps", "scaled_abs_error", "n_below_p10", "n_above_p90")


@dataclass(frozen=True)
class PastForecast:
    """One stored forecast and its outcome so far.

    ``steps``: ``ts``, ``p10``, ``p50``, ``p90`` (the band None for a central-only model) and
    ``close``, the realised close at ``ts`` (None until that bar has closed, or if it is missing).
    ``inside_band``: realised closes within p10-p90, None for a model without a band.
    """

    as_of: str | None
    created_at: str
    model_version: str | None
    steps: list[dict]
    realised_steps: int
    inside_band: int | None


@dataclass
class PastForecasts:
    """A model's last forecasts of one instrument, the closes from before the first to after the last,
    why either is empty, and the rows left out because PostgreSQL cannot read them."""

    forecasts: list[PastForecast] = field(default_factory=list)
    bars: list[dict] = field(default_factory=list)
    bars_note: str | None = None
    unreadable_rows: list[str] = field(default_factory=list)
    empty_reason: str | None = None


def past_forecasts(
    conn: psycopg.Connection, source: BarSource, instrument: Instrument, cadence: Cadence, model: str,
    n_origins: int, now: datetime,
) -> PastForecasts:
    """The newest ``n_origins`` stored forecasts of ``model`` for ``instrument``, oldest first, against the bars.

    The bars run from one horizon before the earliest forecast's origin to its newest step or the
    newest closed bar, whichever is earlier. A row Kronos wrote has no ``as_of``; it is drawn from
    its first step. Steps that cannot be read (no ISO 8601 ``ts``, no number) are left out, as
    every reader of ``ml_predictions`` leaves them out; a row PostgreSQL refuses to read is left
    out whole and named in ``unreadable_rows``.
    """
    if not 1 <= n_origins <= MAX_ORIGINS:
        raise ValueError(f"n_origins must be from 1 to {MAX_ORIGINS}, got {n_origins}")
    params = {"model": model, "timeframe": cadence.name, "symbol": instrument.symbol, "n": n_origins}
    ids = [row_id for (row_id,) in conn.execute(_NEWEST_ROWS, params).fetchall()]
    steps, unreadable_rows = _readable_steps(conn, ids)
    if steps.is_empty():
        return PastForecasts(unreadable_rows=unreadable_rows, empty_reason=(
            f"no {model} {cadence.name} forecasts of {instrument.symbol} are stored" + (" with a readable step" if ids else "")))
    first = steps.select(pl.coalesce("as_of", "ts").min()).item()
    last = max(first, min(steps["ts"].max(), last_bar_close(instrument.calendar, cadence.name, now)))
    closes, note = _closes(source, instrument, cadence, first, last)
    ordered = steps.join(closes, on="ts", how="left").sort(pl.coalesce("as_of", "created_at"), "created_at", "id", "step")
    forecasts = [_past_forecast(rows) for _, rows in ordered.group_by("id", maintain_order=True)]
    return PastForecasts(forecasts, [{"ts": t.isoformat(), "close": _plain(c)} for t, c in closes.iter_rows()],
                         note, unreadable_rows)


def _closes(source: BarSource, instrument: Instrument, cadence: Cadence, first: datetime, last: datetime
            ) -> tuple[pl.DataFrame, str | None]:
    """``ts``, ``close`` from one horizon before ``first`` to ``last``, sorted; and why there are none, if so."""
    bars, unreadable = source.history([instrument], cadence.name, first, last, cadence.horizon)
    closes = bars.select(pl.col("ts").cast(UTC), pl.col("close").cast(pl.Float64)).sort("ts")
    if instrument.symbol in unreadable:
        return closes, f"no bars for {instrument.symbol}: {unreadable[instrument.symbol]}"
    if closes.is_empty():
        return closes, f"no {cadence.name} bars of {instrument.symbol} closed by {last.isoformat()}"
    return closes, None


def _readable_steps(conn: psycopg.Connection, ids: list[int]) -> tuple[pl.DataFrame, list[str]]:
    """The steps of rows ``ids``, and the rows PostgreSQL cannot read at all, each with the reason.

    A stored ts that looks like a date but is none (30 February) fails even the guarded read; the
    rows are then read one by one, so that one such row leaves out only itself.
    """
    if not ids:
        return pl.DataFrame(), []
    try:
        return read_predictions_by_id(conn, ids), []
    except psycopg.errors.DataError:
        parts, unreadable = [], []
        for row_id in ids:
            try:
                parts.append(read_predictions_by_id(conn, [row_id]))
            except psycopg.errors.DataError as exc:
                unreadable.append(f"row {row_id} left out: {str(exc).splitlines()[0]}")
        return (pl.concat(parts) if parts else pl.DataFrame()), unreadable


def _past_forecast(rows: pl.DataFrame) -> PastForecast:
    first = rows.row(0, named=True)
    banded = rows["p10"].is_not_null().all() and rows["p90"].is_not_null().all()
    realised = rows.filter(pl.col("close").is_not_null())
    inside = realised.filter((pl.col("close") >= pl.col("p10")) & (pl.col("close") <= pl.col("p90"))).height
    return PastForecast(
        as_of=first["as_of"].isoformat() if first["as_of"] else None,
        created_at=first["created_at"].isoformat(),
        model_version=first["model_version"],
        steps=[{"ts": r["ts"].isoformat(), **{k: _plain(r[k]) for k in ("p10", "p50", "p90", "close")}}
               for r in rows.iter_rows(named=True)],
        realised_steps=realised.height,
        inside_band=inside if banded else None,
    )


def rolling_scores(
    conn: psycopg.Connection, timeframe: str, symbol: str, window: int,
    span: timedelta | None = None, max_points: int = MAX_POINTS,
) -> list[dict]:
    """Per model (baselines included), the rolling scores of one instrument over its forecast dates.

    Each point pools the model's scored forecasts of the last ``window`` forecast dates:
    ``coverage_p10_p90`` (None for a model without a band) with the closes behind it (``n_obs``),
    ``scaled_mae`` (MAE of p50 in units of a typical one-bar move) and ``relative_mae`` (against
    the random walk on the same forecasts). The losses read reach ``span`` back from the newest
    scored forecast of the cadence (the scoring review's span when None); the last
    ``max_points`` points per model are answered.
    """
    span = DEFAULT_REVIEW_SPAN.get(timeframe) if span is None else span
    newest = latest_as_of(conn, timeframe)
    since = newest - span if newest is not None and span is not None else None
    # Losses are stored for models with rows and for the baselines: naming them lets the key find the rows.
    models = [*known_models(conn), *BASELINE_MODELS]
    losses = read_losses(conn, timeframe, as_of_from=since, columns=_LOSS_COLUMNS, symbols=[symbol], models=models)
    if losses.is_empty():
        return []
    coverage = rolling_coverage(losses, window).select("model_name", "as_of", "n_obs", "coverage_p10_p90")
    points = (
        rolling_scaled_mae(losses, window)
        .join(coverage, on=["model_name", "as_of"], how="left")
        .join(rolling_relative_mae(losses, window), on=["model_name", "as_of"], how="left")
        .sort("model_name", "as_of")
    )
    out = []
    for (model,), rows in sorted(points.partition_by("model_name", as_dict=True).items(), key=lambda kv: kind_order(kv[0][0])):
        label, kind = describe_model(model)
        out.append({"model_name": model, "label": label, "kind": kind, "points": [
            {"as_of": r["as_of"].isoformat(), **{k: _plain(r[k]) for k in ("n_obs", "coverage_p10_p90", "scaled_mae", "relative_mae")}}
            for r in rows.tail(max_points).iter_rows(named=True)
        ]})
    return out


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
