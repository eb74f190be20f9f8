"""Scoring runs: add the forecasts realised since the last run to the stored scores, and review what is stored.

This module owns the step from ``ml_predictions`` rows to the scoring tables (``storage.forecast_scores``),
without Dagster. A run (``score_new_forecasts``) works in one transaction, under a lock per cadence:

1. it finds the rows of ``ml_predictions`` that are neither scored nor skipped as they stand now
   (new rows, rewritten rows, and forecasts still waiting for bars);
2. per group of instruments it reads those rows and the bars they need, places Kronos rows in
   time, keeps the fully realised forecasts (``forecasts.triage``) and scores them with the
   baselines (``losses.score_realised``);
3. it stores one loss row per scored forecast, adds their sums to ``forecast_scores`` and records
   the rows it will not score again.

Where a stored score can no longer be updated by adding (a scored row rewritten or deleted, or a
forecast that lands on a scored ``as_of``), the instrument is rescored from scratch in the same
run. When the scores were never kept, or the method changed, or a rebuild is asked for, the whole
cadence is. Either way the result is what a recomputation over all history gives.

``review_scores`` then builds the summary, the rolling series and the canaries from the stored
tables only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
import psycopg

from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.schema import BarSource
from forecasting_pipeline.scoring.baselines import BASELINE_MODELS, BASELINE_RANDOM_WALK, DEFAULT_VOL_WINDOW
from forecasting_pipeline.scoring.canaries import (
    EnsembleCanary,
    LossCanary,
    coverage_alarms,
    ensemble_canary,
    loss_canary,
)
from forecasting_pipeline.scoring.coverage import CoverageAlarm
from forecasting_pipeline.scoring.forecasts import (
    LATE_BAR_GRACE,
    MALFORMED,
    ROW_KEY,
    SKIP_SCHEMA,
    TOO_LITTLE_HISTORY,
    collisions,
    triage,
)
from forecasting_pipeline.scoring.frames import PER_FORECAST_COLUMNS
from forecasting_pipeline.scoring.losses import score_realised
from forecasting_pipeline.scoring.rolling import rolling_coverage, rolling_relative_mae, rolling_series
from forecasting_pipeline.scoring.scores import SUM_COLUMNS, add_sums, scores_from_sums, summarise_scores
from forecasting_pipeline.storage import forecast_scores as store

logger = logging.getLogger(__name__)

METHOD_VERSION = 1
"""Version of the scoring maths behind the stored sums; a run under another version rebuilds them."""

CHUNK_ROWS = 20_000
"""Stored forecasts read and scored together; instruments are grouped up to this many (one may exceed it)."""

SLICE_STEPS = 250_000
"""Forecast steps scored in one pass; a rebuild of a long history goes through it in slices of ``as_of``."""

ANALYZE_AFTER_ROWS = 10_000
"""Loss rows written by a run above which it refreshes the planner's statistics, so the next run's plan fits."""

DEFAULT_REVIEW_SPAN: dict[str, timedelta | None] = {"1h": timedelta(days=90), "1d": None}
"""Span of stored per-forecast losses, back from the newest, behind the rolling chart and the canaries (None: all)."""


# What the rolling series and the canaries read of each stored per-forecast loss.
_REVIEWED_COLUMNS = ("model_name", "symbol", "as_of", "levels", "n_steps", "mean_pinball", "scaled_abs_error",
                     "n_below_p10", "n_above_p90")


class ScoringWindowError(ValueError):
    """A run was asked to score against an earlier instant than the stored scores already cover."""


@dataclass
class ScoringRun:
    """What one run did.

    Attributes
    ----------
    rebuild_reason
        Why the whole cadence was rescored, or None for an incremental run.
    rebuilt_symbols
        Instruments rescored from scratch in an incremental run, because a scored row changed.
    scored, pending, skipped
        Per model (baselines included in ``scored``): forecasts scored by this run, still waiting
        for a bar, and left unscored for good by this run (per reason).
    outside_universe
        Per model, rows whose symbol is not among the instruments (looked at again each run).
    unreadable_bars
        Symbol -> why its bars could not be read; its forecasts wait for a later run.
    score_rows
        ``forecast_scores`` rows written.
    added_sums
        The score sums of what the run scored, one frame per pass, added to the stored ones at the end.
    """

    timeframe: str
    until: datetime
    rebuild_reason: str | None = None
    rebuilt_symbols: list[str] = field(default_factory=list)
    scored: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    outside_universe: dict[str, int] = field(default_factory=dict)
    unreadable_bars: dict[str, str] = field(default_factory=dict)
    score_rows: int = 0
    added_sums: list[pl.DataFrame] = field(default_factory=list, repr=False)

    def count(self, target: dict[str, int], per_model: dict[str, int]) -> None:
        for model, n in per_model.items():
            target[model] = target.get(model, 0) + n

    def count_skips(self, skips: pl.DataFrame) -> None:
        for reason, model, n in skips.group_by("reason", "model_name").len().iter_rows():
            per_model = self.skipped.setdefault(reason, {})
            per_model[model] = per_model.get(model, 0) + n


@dataclass(frozen=True)
class Review:
    """Everything built from the stored scores of a cadence.

    Attributes
    ----------
    scores
        ``storage.forecast_scores.read_scores``: one row per (model_name, symbol, step, levels), all history.
    sums
        The same rows' sums (``scores.SUM_SCHEMA``).
    summary
        ``scores.summarise_scores``: one row per (model_name, levels), all history.
    per_forecast
        Stored per-forecast losses from ``review_from`` on (the columns the series and canaries use).
    rolling
        Long frame ``as_of``, ``model_name``, ``metric``, ``value`` for ``plots.rolling_scores_png``.
    coverage_alarms
        Per model with a band, the Kupiec test of its latest ``rolling.ROLLING_WINDOW`` forecast dates.
    loss_canary
        The rolling loss comparison, or None when no two models share a scored forecast.
    ensemble_canary
        The ensemble against its best member, or None without scored ensemble forecasts.
    scored, not_scored
        Forecasts scored per model over all history; rows left unscored per reason and model.
    """

    scores: pl.DataFrame
    sums: pl.DataFrame
    summary: pl.DataFrame
    per_forecast: pl.DataFrame
    rolling: pl.DataFrame
    coverage_alarms: dict[str, CoverageAlarm]
    loss_canary: LossCanary | None
    ensemble_canary: EnsembleCanary | None
    scored: dict[str, int]
    not_scored: dict[str, dict[str, int]]
    review_from: datetime | None


def bars_to_read(earliest: datetime, until: datetime, bar: timedelta, vol_window: int = DEFAULT_VOL_WINDOW) -> int:
    """Bars per instrument that reach from ``until`` back past ``earliest`` and the history that scales it.

    No calendar has more than one bar per ``bar`` of time, so the bars after ``earliest`` number
    at most ``(until - earliest) / bar``; ``vol_window + 2`` more hold the bar a forecast starts
    from and the changes behind its loss scale and the baseline's sigma.
    """
    span = max(until - earliest, timedelta(0))
    return -(-span // bar) + vol_window + 2


def _rebuild_reason(state: store.ScoringState | None, until: datetime, rebuild: bool, vol_window: int) -> str | None:
    if rebuild:
        return "asked for"
    if state is None:
        return "no scores kept yet"
    if (state.vol_window, state.method_version) != (vol_window, METHOD_VERSION):
        return "scoring method changed"
    if until < state.scored_through:
        raise ScoringWindowError(
            f"until {until.isoformat()} is before {state.scored_through.isoformat()}, which the stored scores "
            "already cover; rebuild to score as of an earlier instant"
        )
    return None


def score_new_forecasts(
    conn: psycopg.Connection,
    cadence: Cadence,
    bar_source: BarSource,
    instruments: Sequence[Instrument],
    until: datetime,
    rebuild: bool = False,
    vol_window: int = DEFAULT_VOL_WINDOW,
) -> ScoringRun:
    """Score every stored forecast of ``cadence`` whose whole horizon closed by ``until`` and is not scored yet.

    All of it in one transaction: a run that fails leaves the tables as they were, and a re-run
    finds the same work. See the module docstring for what is read, rescored and written.
    """
    run = ScoringRun(cadence.name, until)
    with conn.transaction():
        store.lock_scores(conn, cadence.name)
        state = store.read_state(conn, cadence.name)
        run.rebuild_reason = _rebuild_reason(state, until, rebuild, vol_window)
        if run.rebuild_reason:
            store.delete_scores(conn, cadence.name)
        else:
            run.rebuilt_symbols = store.stale_symbols(conn, cadence.name)
            if run.rebuilt_symbols:
                store.delete_scores(conn, cadence.name, run.rebuilt_symbols)
        store.forget_stale_skips(conn, cadence.name)
        scorer = _ChunkScorer(conn, cadence, bar_source, instruments, run, vol_window)
        scorer.score(store.unscored_rows(conn, cadence.name))
        _write_sums(conn, run)
        if sum(run.scored.values()) > ANALYZE_AFTER_ROWS or run.rebuild_reason or run.rebuilt_symbols:
            store.refresh_statistics(conn)
        rebuilt_at = until if run.rebuild_reason or state is None else state.rebuilt_at
        store.write_state(conn, cadence.name, store.ScoringState(until, vol_window, METHOD_VERSION, rebuilt_at))
    return run


def _write_sums(conn: psycopg.Connection, run: ScoringRun) -> None:
    if not run.added_sums:
        return
    delta = add_sums(*run.added_sums)
    stored = store.read_scores(conn, run.timeframe, with_sums=True).select(SUM_COLUMNS)
    touched = stored.join(delta.select("model_name", "symbol", "step", "levels"),
                          on=["model_name", "symbol", "step", "levels"], how="semi")
    merged = add_sums(touched, delta)
    key = ["model_name", "symbol", "step", "levels"]
    scores = scores_from_sums(merged).join(merged.select(*key, *store.SUM_COLUMNS), on=key)
    run.score_rows = store.write_scores(conn, run.timeframe, scores, run.until)


class _ChunkScorer:
    """Reads, triages, scores and writes unscored rows, one group of instruments at a time."""

    def __init__(self, conn, cadence: Cadence, bar_source: BarSource, instruments: Sequence[Instrument],
                 run: ScoringRun, vol_window: int) -> None:
        self.conn, self.cadence, self.bar_source, self.run, self.vol_window = conn, cadence, bar_source, run, vol_window
        self.instruments = {i.symbol: i for i in instruments}

    def score(self, rows: pl.DataFrame) -> None:
        outside = rows.filter(~pl.col("symbol").is_in(list(self.instruments)))
        self.run.count(self.run.outside_universe, dict(outside.group_by("model_name").len().iter_rows()))
        queue = _chunks(rows.filter(pl.col("symbol").is_in(list(self.instruments))))
        while queue:
            chunk = queue.pop(0)
            clashed = self._score_chunk(chunk)
            if clashed:
                # Rescore those instruments from scratch: drop what is stored, so every row of theirs is
                # unscored; the chunk's other instruments, of which nothing was written, go again as they were.
                store.delete_scores(self.conn, self.cadence.name, clashed)
                self.run.rebuilt_symbols = sorted(set(self.run.rebuilt_symbols) | set(clashed))
                symbols = chunk["symbol"].unique().sort().to_list()
                queue.extend(_chunks(store.unscored_rows(self.conn, self.cadence.name, symbols)))

    def _bars(self, symbols: list[str], earliest: datetime) -> pl.DataFrame:
        n_bars = bars_to_read(earliest, self.run.until, self.cadence.bar, self.vol_window)
        bars, unreadable = self.bar_source.bars(
            [self.instruments[s] for s in symbols], self.cadence.name, self.run.until, n_bars
        )
        for symbol, reason in unreadable.items():
            logger.warning("%s: bars unreadable, its forecasts wait for a later run: %s", symbol, reason)
        self.run.unreadable_bars.update(unreadable)
        return bars.select("symbol", "ts", "close").filter(~pl.col("symbol").is_in(list(unreadable)))

    def _score_chunk(self, rows: pl.DataFrame) -> list[str]:
        """Score one group of instruments; the symbols that must be rescored from scratch instead."""
        stored = store.read_stored_forecasts(self.conn, rows["id"].to_list())
        unreadable = rows.join(stored.select(pl.col("prediction_id").alias("id")).unique(), on="id", how="anti")
        skips = [unreadable.select(
            pl.col("id").alias("prediction_id"), pl.col("created_at").alias("prediction_created_at"), "model_name",
            "symbol", pl.lit(None).alias("as_of"), pl.lit(MALFORMED).alias("reason"),
        ).cast(SKIP_SCHEMA)]  # type: ignore[arg-type]
        if stored.height:
            earliest = stored.select(pl.coalesce("as_of", "ts").min()).item()
            bars = self._bars(sorted(stored["symbol"].unique().to_list()), earliest)
            # Instruments without a bar yet (or unreadable ones) wait: nothing about them can be decided.
            without_bars = stored.filter(~pl.col("symbol").is_in(bars["symbol"].unique().to_list()))
            self.run.count(self.run.pending, dict(
                without_bars.select("model_name", *ROW_KEY).unique().group_by("model_name").len().iter_rows()))
            sorted_rows = triage(stored.filter(pl.col("symbol").is_in(bars["symbol"].unique().to_list())), bars,
                                 LATE_BAR_GRACE[self.cadence.name])
            stored_keys = self._stored_keys(sorted_rows.placed)
            clashed = collisions(sorted_rows.placed, sorted_rows.realised, stored_keys, BASELINE_RANDOM_WALK)
            if clashed:
                return clashed
            skips += [sorted_rows.skipped, self._score_realised(sorted_rows.realised, bars, stored_keys)]
            self.run.count(self.run.pending, sorted_rows.pending)
        skipped = pl.concat(skips)
        self.run.count_skips(skipped)
        store.insert_skips(self.conn, self.cadence.name, skipped)
        return []

    def _stored_keys(self, placed: pl.DataFrame) -> pl.DataFrame:
        symbols = sorted(placed["symbol"].unique().to_list())
        as_of_from = placed["as_of"].min() if placed.height else self.run.until
        return store.read_loss_keys(self.conn, self.cadence.name, symbols, as_of_from)

    def _score_realised(self, realised: pl.DataFrame, bars: pl.DataFrame, stored_keys: pl.DataFrame) -> pl.DataFrame:
        """Score realised forecasts slice by slice and store their losses; the skips of the unscaled ones."""
        with_baseline = stored_keys.filter(pl.col("model_name") == BASELINE_RANDOM_WALK).select("symbol", "as_of")
        keys = realised.select("symbol", "as_of").unique().join(with_baseline, on=["symbol", "as_of"], how="anti")
        ids = realised.select("model_name", "symbol", "as_of", *ROW_KEY).unique()
        skips = []
        for part in _slices(realised):
            scored = score_realised(part.drop(ROW_KEY), bars, self.vol_window, baseline_keys=keys)
            losses = scored.per_forecast.join(ids, on=["model_name", "symbol", "as_of"], how="left")
            store.insert_losses(self.conn, self.cadence.name, losses)
            self.run.count(self.run.scored, dict(losses.group_by("model_name").len().iter_rows()))
            self.run.added_sums.append(scored.sums)
            unscaled = scored.unscaled.filter(~pl.col("model_name").is_in(BASELINE_MODELS))
            skips.append(unscaled.join(ids, on=["model_name", "symbol", "as_of"]).with_columns(
                pl.lit(TOO_LITTLE_HISTORY).alias("reason")).select(list(SKIP_SCHEMA)).cast(SKIP_SCHEMA))  # type: ignore[arg-type]
        return pl.concat(skips) if skips else pl.DataFrame(schema=SKIP_SCHEMA)


def _chunks(rows: pl.DataFrame) -> list[pl.DataFrame]:
    """Rows grouped by instrument into groups of about ``CHUNK_ROWS``, never splitting an instrument."""
    sizes = rows.group_by("symbol").len().sort("symbol")
    groups, current, size = [], [], 0
    for symbol, n in sizes.iter_rows():
        if current and size + n > CHUNK_ROWS:
            groups.append(current)
            current, size = [], 0
        current.append(symbol)
        size += n
    if current:
        groups.append(current)
    return [rows.filter(pl.col("symbol").is_in(group)) for group in groups]


def _slices(realised: pl.DataFrame) -> list[pl.DataFrame]:
    """``realised`` cut by ``as_of`` into parts of about ``SLICE_STEPS`` steps; one (symbol, as_of) never straddles two."""
    per_as_of = realised.group_by("as_of").len().sort("as_of").with_columns(
        (pl.col("len").cum_sum() // SLICE_STEPS).alias("_slice")
    )
    tagged = realised.join(per_as_of.select("as_of", "_slice"), on="as_of")
    return [part.drop("_slice") for part in tagged.partition_by("_slice", maintain_order=False)]


def review_scores(conn: psycopg.Connection, timeframe: str, span: timedelta | None) -> Review:
    """Summary, rolling series and canaries of a cadence from its stored scores and losses.

    ``span``: the per-forecast losses behind the rolling series and the canaries reach this far
    back from the newest ``as_of`` (None: all of them). The scores and the summary cover all history.
    """
    scores = store.read_scores(conn, timeframe, with_sums=True)
    newest = store.latest_as_of(conn, timeframe)
    review_from = newest - span if newest is not None and span is not None else None
    per_forecast = store.read_losses(conn, timeframe, as_of_from=review_from, columns=_REVIEWED_COLUMNS)
    coverage = rolling_coverage(per_forecast)
    return Review(
        scores=scores.drop(store.SUM_COLUMNS),
        sums=scores.select(SUM_COLUMNS),
        summary=summarise_scores(scores.select(SUM_COLUMNS)),
        per_forecast=per_forecast,
        rolling=rolling_series(coverage, rolling_relative_mae(per_forecast)),
        coverage_alarms=dict(sorted(coverage_alarms(coverage).items())),
        loss_canary=loss_canary(per_forecast),
        ensemble_canary=ensemble_canary(per_forecast),
        scored={m: n for m, n in store.loss_counts(conn, timeframe).items() if m not in BASELINE_MODELS},
        not_scored=store.skip_counts(conn, timeframe),
        review_from=review_from,
    )


def losses_realised_by(conn: psycopg.Connection, timeframe: str, model_name: str, instant: datetime) -> pl.DataFrame:
    """Stored per-forecast losses of one model whose whole horizon closed at or before ``instant``.

    Point-in-time: every row was scaled with bars at or before its own ``as_of`` and realised by
    ``instant``, so a consumer (the ensemble's weights) at ``instant`` sees only what was known
    then. Columns ``frames.PER_FORECAST_SCHEMA``: ``mean_pinball`` is the scaled pinball loss
    averaged over levels and steps, ``scaled_abs_error`` that of p50. For forecasts not scored
    yet (a backfill), ``losses.per_forecast_losses`` computes the same rows from forecasts and bars.
    """
    return store.read_losses(conn, timeframe, model_name=model_name, realised_by=instant).select(PER_FORECAST_COLUMNS)
