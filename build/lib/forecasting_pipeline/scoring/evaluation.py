"""Evaluation of the stored forecasts of every model against the market data, and the ``forecast_scores`` table.

This module owns the step from ``ml_predictions`` rows to stored scores, without Dagster:

* reading every model's forecasts of a cadence (``chronos-2``, ``kronos-base``, any other) and
  giving Kronos rows, whose ``as_of`` is NULL, the ``as_of`` they must have had;
* keeping the forecasts whose whole horizon has been realised, adding the two baselines on the
  same horizon bars, and scoring them all with ``scoring`` (per model, symbol and step);
* the rolling series behind the plot (coverage and relative error over time) and the two
  canaries (loss-difference sign flip, Kupiec coverage failure);
* writing and reading ``forecast_scores`` (migration ``20260620_forecast_scores.sql``).

The arithmetic of losses, baselines and tests lives in ``scoring``; this module only chooses
what is scored against what.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
import psycopg
from psycopg import sql

from forecasting_pipeline.scoring.scores import (
    BASELINE_MODELS,
    BASELINE_RANDOM_WALK,
    CANARY_DEADBAND,
    CANARY_PERSIST,
    CANARY_WINDOW,
    DEFAULT_VOL_WINDOW,
    ROLLING_COVERAGE_WINDOW,
    CoverageAlarm,
    SignFlip,
    coverage_alarm,
    detect_sign_flip,
    fully_realised,
    random_walk_baseline,
    realised_views,
    rolling_model_comparison,
    summarise_scores,
)
from forecasting_pipeline.storage.ml_predictions import (
    KRONOS_MODEL_NAME,
    MODEL_NAME,
    read_predictions,
)

logger = logging.getLogger(__name__)

CANARY_RECENT_DATES = CANARY_WINDOW
"""Forecast dates back from the latest within which a confirmed sign flip raises the warning.

A flip is news while the new sign is young: once it has held for ``CANARY_RECENT_DATES`` more
forecast dates (about a month of daily forecasts) it is the established regime, the warning
clears, and the flip stays listed in the check's metadata and visible in the plot.
"""

_FORECAST_COLUMNS = ("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")

_SCORE_COLUMNS = (
    "model_name", "symbol", "step", "levels", "n", "pinball_p10", "pinball_p50", "pinball_p90",
    "mean_pinball", "n_below_p10", "n_above_p90", "coverage_p10_p90", "below_p10_rate",
    "above_p90_rate", "scaled_mae", "scaled_rw_mae", "relative_mae", "first_as_of", "last_as_of",
)

_INSERT_SCORES = """
INSERT INTO forecast_scores (timeframe, model_name, symbol, step, levels, n, pinball_p10, pinball_p50,
    pinball_p90, mean_pinball, n_below_p10, n_above_p90, coverage_p10_p90, below_p10_rate, above_p90_rate,
    scaled_mae, scaled_rw_mae, relative_mae, first_as_of, last_as_of, scored_through, scored_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
"""


@dataclass(frozen=True)
class LossCanary:
    """The rolling loss difference of two models and its confirmed sign flips.

    ``model_a`` minus ``model_b``, in naive-scale units: negative means ``model_a`` has the lower
    loss. ``recent`` holds the flips confirmed within the last ``CANARY_RECENT_DATES`` dates.
    """

    model_a: str
    model_b: str
    loss_column: str
    comparison: pl.DataFrame
    flips: list[SignFlip]
    recent: list[SignFlip]

    @property
    def fired(self) -> bool:
        return bool(self.recent)


@dataclass(frozen=True)
class Evaluation:
    """Everything one scoring pass produces for a cadence.

    Attributes
    ----------
    scores
        One row per (model_name, symbol, step, levels): ``scoring.score_forecasts`` columns plus
        ``first_as_of`` and ``last_as_of`` of the forecasts pooled.
    summary
        ``scoring.summarise_scores`` of ``scores``: one row per (model_name, levels).
    per_forecast
        ``scoring.per_forecast_losses``: one row per (model_name, symbol, as_of).
    rolling
        Long frame ``as_of``, ``model_name``, ``metric`` (``coverage_p10_p90`` or
        ``relative_mae``), ``value``, for ``plots.rolling_scores_png``.
    coverage_alarms
        For each model found in ``ml_predictions`` that has a band, the Kupiec test of its latest
        rolling window of ``ROLLING_COVERAGE_WINDOW`` forecast dates.
    loss_canary
        The rolling loss comparison, or None when the two models share no scored forecast.
    forecasts_scored, forecasts_pending, forecasts_without_as_of
        Per model: forecasts whose whole horizon is realised (scored), those still waiting for
        bars, and Kronos-style rows whose ``as_of`` could not be placed (no bar before their first step).
    """

    scores: pl.DataFrame
    summary: pl.DataFrame
    per_forecast: pl.DataFrame
    rolling: pl.DataFrame
    coverage_alarms: dict[str, CoverageAlarm]
    loss_canary: LossCanary | None
    forecasts_scored: dict[str, int] = field(default_factory=dict)
    forecasts_pending: dict[str, int] = field(default_factory=dict)
    forecasts_without_as_of: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Reading forecasts
# ---------------------------------------------------------------------------


def stored_model_names(conn: psycopg.Connection, timeframe: str) -> list[str]:
    """Names of the models with rows of ``timeframe`` in ``ml_predictions``, sorted."""
    rows = conn.execute(
        "SELECT DISTINCT model_name FROM ml_predictions WHERE timeframe = %s ORDER BY model_name", (timeframe,)
    ).fetchall()
    return [name for (name,) in rows]


def read_all_forecasts(conn: psycopg.Connection, timeframe: str, since: datetime | None = None) -> pl.DataFrame:
    """Every stored forecast of ``timeframe``, all models, as long rows (``ml_predictions.read_predictions`` columns).

    With ``since``, only forecasts made at or after it (``as_of``, else ``created_at``). Models
    whose rows hold only ``{"ts", "close"}`` steps (Kronos) read with p50 = close and null p10/p90.
    """
    frames = [
        read_predictions(conn, timeframe, model_name=name, as_of_from=since)
        for name in stored_model_names(conn, timeframe)
    ]
    frames = [f for f in frames if f.height]
    if not frames:
        return read_predictions(conn, timeframe)  # the empty frame, with the schema
    return pl.concat(frames)


def complete_as_of(forecasts: pl.DataFrame, bars: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Give rows with a null ``as_of`` (Kronos) the close time of the last bar before their first step.

    Kronos stores no ``as_of``; the bar before its first forecast bar is the last one it can have
    read, which is also where its random-walk baseline and loss scale are anchored. When several
    rows of one model and symbol land on the same ``as_of`` (a forecast re-written), the one
    created last is kept, as a re-run of a Chronos-2 window replaces its row.

    Parameters
    ----------
    forecasts
        ``read_predictions`` rows: ``model_name``, ``symbol``, ``as_of`` (nullable), ``created_at``,
        ``step``, ``ts``, ``p10``, ``p50``, ``p90``.
    bars
        ``symbol``, ``ts`` (bar close), ``close``.

    Returns
    -------
    (pl.DataFrame, dict[str, int])
        The forecast columns (``model_name``, ``symbol``, ``as_of``, ``step``, ``ts``, ``p10``,
        ``p50``, ``p90``) with every ``as_of`` set, and per model the number of forecasts dropped
        because no bar precedes their first step.
    """
    known = forecasts.filter(pl.col("as_of").is_not_null())
    unknown = forecasts.filter(pl.col("as_of").is_null())
    dropped: dict[str, int] = {}
    if unknown.height:
        # One forecast per stored row: created_at tells two rows of the same symbol apart.
        key = ["model_name", "symbol", "created_at"]
        first = unknown.group_by(key).agg(pl.col("ts").min().alias("_first_ts")).sort("_first_ts")
        bar_ts = bars.select("symbol", pl.col("ts").cast(pl.Datetime("us", "UTC")).alias("_bar_ts")).sort("_bar_ts")
        placed = first.join_asof(
            bar_ts, left_on="_first_ts", right_on="_bar_ts", by="symbol", strategy="backward",
            allow_exact_matches=False, check_sortedness=False,
        )
        for (name,), part in placed.filter(pl.col("_bar_ts").is_null()).partition_by("model_name", as_dict=True).items():
            dropped[name] = part.height
        anchors = placed.filter(pl.col("_bar_ts").is_not_null()).select(*key, pl.col("_bar_ts").alias("_as_of"))
        unknown = unknown.join(anchors, on=key, how="inner").with_columns(pl.col("_as_of").alias("as_of")).drop("_as_of")
    merged = pl.concat([known, unknown.select(known.columns)])
    latest = (
        merged.group_by("model_name", "symbol", "as_of")
        .agg(pl.col("created_at").max())
    )
    merged = merged.join(latest, on=["model_name", "symbol", "as_of", "created_at"], how="semi")
    return merged.select(_FORECAST_COLUMNS).sort("model_name", "symbol", "as_of", "step"), dropped


def scoring_since(until: datetime, lookback_days: int | None) -> datetime | None:
    """The earliest forecast time to score: ``lookback_days`` before ``until``; None (or 0) scores all."""
    if lookback_days is not None and lookback_days < 0:
        raise ValueError(f"lookback_days must be 0 (all forecasts) or positive, got {lookback_days}")
    return until - timedelta(days=lookback_days) if lookback_days else None


def bars_to_read(earliest_as_of: datetime, until: datetime, bar: timedelta, vol_window: int = DEFAULT_VOL_WINDOW) -> int:
    """Bars per instrument that cover every forecast from ``earliest_as_of`` and the history that scales it.

    No calendar has more than one bar per ``bar`` of time, so the bars after ``earliest_as_of``
    number at most ``(until - earliest_as_of) / bar``; ``vol_window + 1`` more reach back far
    enough for the loss scale and the baseline's sigma of the earliest forecast.
    """
    span = max(until - earliest_as_of, timedelta(0))
    return math.ceil(span / bar) + vol_window + 1


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _baselines(forecasts: pl.DataFrame, bars: pl.DataFrame, vol_window: int) -> pl.DataFrame:
    """Both baselines on the horizon bars the models forecast, one target bar per (symbol, as_of, step).

    Should two models label a step's bar differently, Chronos-2's label is used (models sort
    with ``chronos-2`` first), so the baselines never need two targets for one step.
    """
    order = pl.when(pl.col("model_name") == MODEL_NAME).then(0).otherwise(1)
    horizon = (
        forecasts.sort(order, "model_name")
        .select("symbol", "as_of", "step", "ts")
        .unique(subset=["symbol", "as_of", "step"], keep="first", maintain_order=True)
    )
    return random_walk_baseline(bars, horizon, vol_window)


def _counts(frame: pl.DataFrame) -> dict[str, int]:
    if frame.is_empty():
        return {}
    per_model = frame.select("model_name", "symbol", "as_of").unique().group_by("model_name").len()
    return {name: int(n) for name, n in per_model.sort("model_name").iter_rows()}


def _as_of_span(forecasts: pl.DataFrame) -> pl.DataFrame:
    return forecasts.group_by("model_name", "symbol").agg(
        pl.col("as_of").min().alias("first_as_of"), pl.col("as_of").max().alias("last_as_of")
    )


def rolling_relative_mae(per_forecast: pl.DataFrame, window: int = ROLLING_COVERAGE_WINDOW) -> pl.DataFrame:
    """Relative MAE of each model's p50 against the random walk, pooled over the last ``window`` forecast dates.

    At each forecast date the scaled absolute errors of a model and of ``baseline-random-walk``
    are summed over the symbols both forecast; each point divides the model's sum by the random
    walk's over the last ``window`` dates of that model (a ratio of pooled errors, like
    ``relative_mae`` in the scores). Below 1 means better than persistence.

    Returns
    -------
    pl.DataFrame
        ``model_name``, ``as_of``, ``relative_mae``; no rows for the random walk itself.
    """
    rw = per_forecast.filter(pl.col("model_name") == BASELINE_RANDOM_WALK).select(
        "symbol", "as_of", pl.col("scaled_abs_error").alias("_rw")
    )
    models = per_forecast.filter(pl.col("model_name") != BASELINE_RANDOM_WALK)
    per_date = (
        models.join(rw, on=["symbol", "as_of"], how="inner")
        .group_by("model_name", "as_of")
        .agg(pl.col("scaled_abs_error").sum().alias("_err"), pl.col("_rw").sum())
        .sort("model_name", "as_of")
    )
    rolled = per_date.with_columns(
        pl.col("_err").rolling_sum(window, min_samples=1).over("model_name"),
        pl.col("_rw").rolling_sum(window, min_samples=1).over("model_name"),
    )
    return rolled.select(
        "model_name", "as_of", pl.when(pl.col("_rw") > 0).then(pl.col("_err") / pl.col("_rw")).alias("relative_mae")
    )


def _canary_pair(per_forecast: pl.DataFrame, models: list[str]) -> tuple[str, str] | None:
    """Chronos-2 against Kronos when both have scored forecasts, else a model against the random walk."""
    present = set(per_forecast["model_name"].unique().to_list())
    stored = [m for m in models if m in present]
    if MODEL_NAME in stored and KRONOS_MODEL_NAME in stored:
        return MODEL_NAME, KRONOS_MODEL_NAME
    first = MODEL_NAME if MODEL_NAME in stored else (stored[0] if stored else None)
    if first is None or BASELINE_RANDOM_WALK not in present:
        return None
    return first, BASELINE_RANDOM_WALK


def loss_canary(per_forecast: pl.DataFrame, models: list[str]) -> LossCanary | None:
    """The regime-shift canary: sign flips of the rolling loss difference of two models.

    The pair is ``chronos-2`` vs ``kronos-base`` when both have scored forecasts, otherwise the
    first stored model (``chronos-2`` preferred) vs ``baseline-random-walk``. The loss is the mean
    pinball when both models score the same quantile levels, else the scaled absolute error of
    p50 (Kronos and the random walk have no band). Thresholds: ``scoring.CANARY_WINDOW``,
    ``CANARY_PERSIST``, ``CANARY_DEADBAND`` and ``CANARY_RECENT_DATES``.
    """
    pair = _canary_pair(per_forecast, models)
    if pair is None:
        return None
    a, b = pair
    levels = per_forecast.filter(pl.col("model_name").is_in([a, b])).group_by("model_name").agg(
        pl.col("levels").n_unique().alias("kinds"), pl.col("levels").first()
    )
    same_levels = levels.height == 2 and levels["kinds"].max() == 1 and levels["levels"].n_unique() == 1
    loss_column = "mean_pinball" if same_levels else "scaled_abs_error"
    comparison = rolling_model_comparison(per_forecast, a, b, window=CANARY_WINDOW, loss_column=loss_column)
    if comparison.is_empty():
        return None
    flips = detect_sign_flip(
        comparison["rolling_diff"], persist=CANARY_PERSIST, deadband=CANARY_DEADBAND, times=comparison["as_of"]
    )
    first_recent = comparison.height - CANARY_RECENT_DATES
    recent = [f for f in flips if f.confirmed_index >= first_recent]
    return LossCanary(a, b, loss_column, comparison, flips, recent)


def evaluate(
    forecasts: pl.DataFrame,
    bars: pl.DataFrame,
    vol_window: int = DEFAULT_VOL_WINDOW,
    without_as_of: dict[str, int] | None = None,
) -> Evaluation:
    """Score every model's fully realised forecasts and the two baselines; build the rolling series and canaries.

    Parameters
    ----------
    forecasts
        Forecast frame with every ``as_of`` set (see ``complete_as_of``), any number of models.
    bars
        Realised bars: ``symbol``, ``ts``, ``close``; at least ``vol_window + 1`` before the
        earliest forecast for full-length scales.
    vol_window
        One-bar changes behind the loss scale and the baseline's sigma.
    without_as_of
        Forecasts dropped by ``complete_as_of``, passed through to the result.
    """
    models = sorted(set(forecasts["model_name"].unique().to_list()) - set(BASELINE_MODELS))
    realised = fully_realised(forecasts, bars) if forecasts.height else forecasts.select(_FORECAST_COLUMNS)
    scored_counts = _counts(realised)
    pending = {m: n - scored_counts.get(m, 0) for m, n in _counts(forecasts).items() if n - scored_counts.get(m, 0)}
    if realised.is_empty():
        empty = pl.DataFrame()
        return Evaluation(empty, empty, empty, empty, {}, None, {}, pending, without_as_of or {})

    everything = pl.concat([realised, _baselines(realised, bars, vol_window)])
    scores, per_forecast, coverage = realised_views(everything, bars, vol_window, ROLLING_COVERAGE_WINDOW)
    spans = pl.concat([_as_of_span(realised), _as_of_span(everything.filter(pl.col("model_name").is_in(BASELINE_MODELS)))])
    scores = scores.join(spans, on=["model_name", "symbol"], how="left")
    relative = rolling_relative_mae(per_forecast)
    rolling = pl.concat([
        coverage.select("as_of", "model_name", pl.lit("coverage_p10_p90").alias("metric"),
                        pl.col("coverage_p10_p90").alias("value")),
        relative.select("as_of", "model_name", pl.lit("relative_mae").alias("metric"),
                        pl.col("relative_mae").alias("value")),
    ]).sort("metric", "model_name", "as_of")

    alarms: dict[str, CoverageAlarm] = {}
    for name, part in coverage.filter(pl.col("model_name").is_in(models)).partition_by("model_name", as_dict=True).items():
        last = part.sort("as_of").row(-1, named=True)
        alarms[name[0]] = coverage_alarm(last["n_obs"], last["n_below_p10"] + last["n_above_p90"])

    return Evaluation(
        scores=scores,
        summary=summarise_scores(scores),
        per_forecast=per_forecast,
        rolling=rolling,
        coverage_alarms=dict(sorted(alarms.items())),
        loss_canary=loss_canary(per_forecast, models),
        forecasts_scored=scored_counts,
        forecasts_pending=pending,
        forecasts_without_as_of=without_as_of or {},
    )


# ---------------------------------------------------------------------------
# The forecast_scores table
# ---------------------------------------------------------------------------


def replace_scores(conn: psycopg.Connection, timeframe: str, scores: pl.DataFrame, scored_through: datetime) -> int:
    """Replace every ``forecast_scores`` row of ``timeframe`` with ``scores``, in one transaction.

    Scores are recomputed over all realised forecasts each time, so replacing the cadence's rows
    as a whole is the idempotent write: a re-run leaves the same rows, and a model whose
    forecasts were removed leaves no stale scores. Readers see the old rows or the new, never a mix.
    """
    params = [
        (timeframe, *row, scored_through) for row in scores.select(_SCORE_COLUMNS).iter_rows()
    ]
    with conn.transaction():
        conn.execute("DELETE FROM forecast_scores WHERE timeframe = %s", (timeframe,))
        with conn.cursor() as cur:
            cur.executemany(_INSERT_SCORES, params)
    return len(params)


def read_scores(conn: psycopg.Connection, timeframe: str) -> pl.DataFrame:
    """The stored scores of ``timeframe``, sorted by model, symbol and step."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in (*_SCORE_COLUMNS, "scored_through"))
    cur = conn.execute(
        sql.SQL(
            "SELECT {} FROM forecast_scores WHERE timeframe = %s ORDER BY model_name, symbol, step, levels"
        ).format(columns),
        (timeframe,),
    )
    rows = cur.fetchall()
    schema = {
        **{c: pl.Float64 for c in _SCORE_COLUMNS},
        "model_name": pl.Utf8, "symbol": pl.Utf8, "step": pl.Int32, "levels": pl.Int8, "n": pl.Int64,
        "n_below_p10": pl.Int64, "n_above_p90": pl.Int64, "first_as_of": pl.Datetime("us", "UTC"),
        "last_as_of": pl.Datetime("us", "UTC"), "scored_through": pl.Datetime("us", "UTC"),
    }
    return pl.DataFrame(rows, schema={c: schema[c] for c in (*_SCORE_COLUMNS, "scored_through")}, orient="row")
