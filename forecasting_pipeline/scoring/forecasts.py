"""Stored forecasts sorted for scoring: placed in time, one per model and ``as_of``, realised or not.

Rows come from ``ml_predictions`` through ``storage.forecast_scores.read_stored_forecasts``: one
row per step with the stored row's ``prediction_id`` and ``prediction_created_at``. Kronos stores
no ``as_of``; the close of the last bar before its first step is the last one it can have read,
which is also where its random-walk baseline and loss scale are anchored (``place_as_of``).

Each stored forecast ends up in one of three places (``triage``):

* *realised*: every step has a bar at its ``ts``; it is scored;
* *pending*: some step has no bar yet; a later run looks again;
* *not scored*, with a reason (``SKIP_REASONS``); it is not looked at again until its row is
  rewritten or the scores are rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from forecasting_pipeline.scoring.frames import FORECAST_COLUMNS, UTC

NO_BAR_BEFORE = "no bar before its first step"
SUPERSEDED = "superseded by a row written later for the same as_of"
MISSING_BAR = "a bar of its horizon is still missing after the grace period"
MALFORMED = "malformed: no readable step, or only one end of a band"
TOO_LITTLE_HISTORY = "too little history before as_of"
SKIP_REASONS = (NO_BAR_BEFORE, SUPERSEDED, MISSING_BAR, MALFORMED, TOO_LITTLE_HISTORY)

LATE_BAR_GRACE = {"1h": timedelta(days=3), "1d": timedelta(days=10)}
"""How far the market data must have moved past a forecast's last step before a missing bar counts as lost.

Until then the forecast stays pending and each run looks for the bar again, so a bar that a
vendor delivers late is still scored. After it the forecast is recorded as not scored
(``MISSING_BAR``), so that a permanent gap does not make every later run read old bars.
"""

ROW_KEY = ("prediction_id", "prediction_created_at")
STORED_SCHEMA: dict[str, pl.DataType] = {
    "prediction_id": pl.Int64(), "prediction_created_at": UTC, "model_name": pl.Utf8(), "symbol": pl.Utf8(),
    "as_of": UTC, "step": pl.Int32(), "ts": UTC, "p10": pl.Float64(), "p50": pl.Float64(), "p90": pl.Float64(),
}
SKIP_SCHEMA: dict[str, pl.DataType] = {
    "prediction_id": pl.Int64(), "prediction_created_at": UTC, "model_name": pl.Utf8(), "symbol": pl.Utf8(),
    "as_of": UTC, "reason": pl.Utf8(),
}


@dataclass(frozen=True)
class Triage:
    """Stored forecasts sorted by what a scoring run does with them.

    Attributes
    ----------
    placed
        Every forecast placed in time and kept (one per model_name, symbol, as_of), realised or
        not: forecast frame (``frames.FORECAST_COLUMNS``) plus ``prediction_id`` and
        ``prediction_created_at``.
    realised
        The fully realised ones among them.
    pending
        Per model, forecasts still waiting for a bar.
    skipped
        ``SKIP_SCHEMA`` rows: forecasts that will not be scored, and why.
    """

    placed: pl.DataFrame
    realised: pl.DataFrame
    pending: dict[str, int]
    skipped: pl.DataFrame


def _skips(frame: pl.DataFrame, reason: str) -> pl.DataFrame:
    rows = frame.select(*ROW_KEY, "model_name", "symbol", "as_of").unique(ROW_KEY)
    return rows.with_columns(pl.lit(reason).alias("reason")).cast(SKIP_SCHEMA)  # type: ignore[arg-type]


def place_as_of(stored: pl.DataFrame, bars: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Give rows with a null ``as_of`` (Kronos) the close time of the last bar before their first step.

    A row is placed only once its first step's bar time has passed the symbol's latest bar:
    before that, a bar still to come could be the one it starts from.

    Returns
    -------
    (placed, waiting, lost)
        The rows with every ``as_of`` set; the rows whose first step lies after the symbol's
        latest bar (left for a later run); and the ``SKIP_SCHEMA`` rows of the forecasts that no
        bar precedes.
    """
    unknown = stored.filter(pl.col("as_of").is_null())
    known = stored.filter(pl.col("as_of").is_not_null())
    if unknown.is_empty():
        return known, unknown, pl.DataFrame(schema=SKIP_SCHEMA)
    row = [*ROW_KEY, "symbol"]
    latest = bars.group_by("symbol").agg(pl.col("ts").cast(UTC).max().alias("_latest_bar"))
    first = (
        unknown.group_by(row).agg(pl.col("ts").min().alias("_first_ts"))
        .join(latest, on="symbol", how="left")
        .filter(pl.col("_first_ts") <= pl.col("_latest_bar"))
        .sort("_first_ts")
    )
    bar_ts = bars.select("symbol", pl.col("ts").cast(UTC).alias("_bar_ts")).sort("_bar_ts")
    anchors = first.join_asof(
        bar_ts, left_on="_first_ts", right_on="_bar_ts", by="symbol", strategy="backward",
        allow_exact_matches=False, check_sortedness=False,
    )
    found = anchors.filter(pl.col("_bar_ts").is_not_null()).select(*row, pl.col("_bar_ts").alias("_as_of"))
    placed = unknown.join(found, on=row, how="inner").with_columns(pl.col("_as_of").alias("as_of")).drop("_as_of")
    lost = unknown.join(anchors.filter(pl.col("_bar_ts").is_null()).select(row), on=row, how="semi")
    waiting = unknown.join(first.select(row), on=row, how="anti")
    return pl.concat([known, placed]), waiting, _skips(lost, NO_BAR_BEFORE)


def keep_latest(placed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One forecast per (model_name, symbol, as_of): the row written last; the others as ``SUPERSEDED`` skips.

    A re-run of a Chronos-2 window replaces its row; Kronos may instead write a second row that
    lands on the same ``as_of``. Either way the newest forecast counts.
    """
    key = ["model_name", "symbol", "as_of"]
    winners = (
        placed.select(*key, *ROW_KEY).unique()
        .sort("prediction_created_at", "prediction_id")
        .group_by(key).last()
        .select(ROW_KEY)
    )
    kept = placed.join(winners, on=list(ROW_KEY), how="semi")
    return kept, _skips(placed.join(winners, on=list(ROW_KEY), how="anti"), SUPERSEDED)


def triage(stored: pl.DataFrame, bars: pl.DataFrame, grace: timedelta) -> Triage:
    """Place, deduplicate and sort stored forecasts into realised, pending and not scored.

    Parameters
    ----------
    stored
        ``STORED_SCHEMA`` rows, one per step.
    bars
        ``symbol``, ``ts``, ``close``: every bar closed by the run's ``until``, from far enough
        back to hold the bar before each forecast's first step.
    grace
        ``LATE_BAR_GRACE`` of the cadence.
    """
    half_band = stored.filter(pl.col("p10").is_null() != pl.col("p90").is_null())
    malformed = _skips(stored.join(half_band.select(ROW_KEY), on=list(ROW_KEY), how="semi"), MALFORMED)
    stored = stored.join(half_band.select(ROW_KEY), on=list(ROW_KEY), how="anti")
    placed, unplaced, lost_anchor = place_as_of(stored, bars)
    kept, superseded = keep_latest(placed)

    bar_keys = bars.select("symbol", pl.col("ts").cast(UTC), pl.lit(True).alias("_bar"))
    latest_bar = bars.group_by("symbol").agg(pl.col("ts").cast(UTC).max().alias("_latest_bar"))
    status = (
        kept.join(bar_keys, on=["symbol", "ts"], how="left")
        .group_by(*ROW_KEY, "model_name", "symbol", "as_of")
        .agg(pl.col("_bar").is_not_null().all().alias("_complete"), pl.col("ts").max().alias("_last_ts"))
        .join(latest_bar, on="symbol", how="left")
    )
    lost = status.filter(~pl.col("_complete") & (pl.col("_latest_bar") - pl.col("_last_ts") > grace))
    waiting = status.filter(~pl.col("_complete")).join(lost.select(ROW_KEY), on=list(ROW_KEY), how="anti")
    realised = kept.join(status.filter(pl.col("_complete")).select(ROW_KEY), on=list(ROW_KEY), how="semi")
    pending = pl.concat([waiting.select("model_name", *ROW_KEY), unplaced.select("model_name", *ROW_KEY).unique()])
    columns = [*FORECAST_COLUMNS, *ROW_KEY]
    return Triage(
        placed=kept.select(columns),
        realised=realised.select(columns).sort("model_name", "symbol", "as_of", "step"),
        pending={name: int(n) for name, n in pending.group_by("model_name").len().sort("model_name").iter_rows()},
        skipped=pl.concat([malformed, lost_anchor, superseded, _skips(lost, MISSING_BAR)]),
    )


def collisions(placed: pl.DataFrame, realised: pl.DataFrame, stored: pl.DataFrame, baseline: str) -> list[str]:
    """Symbols whose newly realised forecasts clash with losses already stored, so that only a rescore is exact.

    A clash is a forecast, realised or not, of a (model_name, symbol, as_of) already scored (a
    row written since, that supersedes the scored one), or a realised forecast whose horizon
    reaches past the stored baseline's at its (symbol, as_of): baselines forecast the union of
    every model's steps there, which a later, longer forecast changes.

    Parameters
    ----------
    placed, realised
        ``Triage.placed`` and ``Triage.realised``.
    stored
        ``model_name``, ``symbol``, ``as_of``, ``n_steps``, ``realised_at`` of the stored losses
        at the same symbols and times.
    baseline
        Model name whose stored rows carry the baselines' horizon (the random walk's).
    """
    if placed.is_empty() or stored.is_empty():
        return []
    key = ["model_name", "symbol", "as_of"]
    rescored = placed.select(key).unique().join(stored.select(key).unique(), on=key, how="semi")
    forecasts = realised.group_by(key).agg(pl.len().alias("_n"), pl.col("ts").max().alias("_end"))
    baselines = stored.filter(pl.col("model_name") == baseline).select("symbol", "as_of", "n_steps", "realised_at")
    longer = forecasts.join(baselines, on=["symbol", "as_of"], how="inner").filter(
        (pl.col("_n") > pl.col("n_steps")) | (pl.col("_end") > pl.col("realised_at"))
    )
    return sorted(set(rescored["symbol"].to_list()) | set(longer["symbol"].to_list()))
