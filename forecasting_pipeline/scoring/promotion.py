"""The promotion test: is a fine-tuned challenger better than the champion on forecasts it never trained on?

Both write forecasts of the same windows: the champion as ``chronos-2``, the challenger as
``chronos-2-challenger`` (its shadow), and the scoring run stores every one's losses in
``forecast_losses``. The test pairs the two at each (symbol, as_of) from the challenger's training
cutoff on, using only the challenger's own rows (its ``model_version``) and the rows of the
champion that serves now (``champion_version``): after a promotion, the chain's windows must be
forecast again by the new champion before a challenger can be compared with it.

The challenger passes when, over at least ``min_forecasts`` paired forecasts:

* its scaled absolute error of the median is lower, by a one-sided Diebold–Mariano test at
  ``ALPHA`` (``diebold_mariano``), and
* its scaled quantile (pinball) loss, averaged over p10/p50/p90, is lower by the same test, and
* its p10–p90 coverage is not further from the nominal 80% than the champion's by more than
  ``COVERAGE_TOLERANCE``.

The loss differential is averaged over the instruments at each origin before the test: forecasts
of different instruments from one origin share the market's shocks, so they are not independent
observations, while the averaged series is one observation per origin, autocorrelated up to the
horizon (which the test's variance allows for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
import psycopg

from forecasting_pipeline.scoring.diebold_mariano import DieboldMariano, diebold_mariano
from forecasting_pipeline.storage import model_registry
from forecasting_pipeline.storage.ml_predictions import CHALLENGER_MODEL_NAME, MODEL_NAME

ALPHA = 0.05
"""One-sided significance level both Diebold–Mariano tests must reach."""

COVERAGE_TOLERANCE = 0.05
"""How much further from the nominal coverage the challenger's p10–p90 band may be than the champion's."""

NOMINAL_COVERAGE = 0.8
"""p10–p90 holds 80% of outcomes when calibrated."""

DEFAULT_MIN_FORECASTS = 250
"""Paired out-of-sample forecasts below which the test does not pass (``PROMOTION_MIN_FORECASTS``)."""

_PAIRED_LOSSES = """
SELECT l.model_name, p.model_version, l.symbol, l.as_of, l.n_steps, l.mean_pinball, l.scaled_abs_error,
       l.n_below_p10, l.n_above_p90, p.created_at
FROM forecast_losses l
JOIN ml_predictions p ON p.id = l.prediction_id AND p.created_at = l.prediction_created_at
WHERE l.timeframe = %(timeframe)s AND l.model_name = ANY(%(models)s) AND l.levels = 3 AND l.as_of >= %(since)s
"""
_LOSS_SCHEMA = {
    "model_name": pl.Utf8, "model_version": pl.Utf8, "symbol": pl.Utf8, "as_of": pl.Datetime("us", "UTC"),
    "n_steps": pl.Int64, "mean_pinball": pl.Float64, "scaled_abs_error": pl.Float64, "n_below_p10": pl.Int64,
    "n_above_p90": pl.Int64, "created_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class Side:
    """One model's losses over the paired forecasts."""

    model_version: str | None
    scaled_mae: float | None
    mean_pinball: float | None
    coverage: float | None


@dataclass(frozen=True)
class PromotionTest:
    """The evidence for or against promoting one challenger; ``reasons`` is empty when it passes."""

    timeframe: str
    since: datetime
    min_forecasts: int
    n_forecasts: int
    n_origins: int
    champion: Side
    challenger: Side
    scaled_mae_test: DieboldMariano | None
    pinball_test: DieboldMariano | None
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def evidence(self) -> dict:
        """Plain JSON: what the event log keeps and the asset check shows."""

        def test(result: DieboldMariano | None) -> dict | None:
            if result is None:
                return None
            return {"mean_difference": result.mean_difference, "statistic": result.statistic,
                    "p_value": result.p_value, "origins": result.n, "lags": result.lags}

        return {
            "timeframe": self.timeframe, "since": self.since.isoformat(), "passed": self.passed,
            "reasons": list(self.reasons), "min_forecasts": self.min_forecasts, "forecasts": self.n_forecasts,
            "origins": self.n_origins, "alpha": ALPHA, "coverage_tolerance": COVERAGE_TOLERANCE,
            "champion": vars(self.champion), "challenger": vars(self.challenger),
            "scaled_mae_test": test(self.scaled_mae_test), "pinball_test": test(self.pinball_test),
        }

    def lines(self) -> list[str]:
        """A few readable lines: the numbers, then PASSED or each reason it did not pass."""

        def num(value: float | None, digits: int = 4) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        def p(result: DieboldMariano | None) -> str:
            return "not tested" if result is None else f"DM {result.statistic:+.2f}, p = {result.p_value:.3g}"

        out = [
            f"{self.n_forecasts} paired out-of-sample forecasts (need {self.min_forecasts}) from {self.n_origins} "
            f"origins since {self.since.isoformat()}",
            f"  scaled MAE of p50   champion {num(self.champion.scaled_mae)}  challenger "
            f"{num(self.challenger.scaled_mae)}  ({p(self.scaled_mae_test)})",
            f"  scaled quantile loss champion {num(self.champion.mean_pinball)}  challenger "
            f"{num(self.challenger.mean_pinball)}  ({p(self.pinball_test)})",
            f"  p10-p90 coverage    champion {num(self.champion.coverage, 3)}  challenger "
            f"{num(self.challenger.coverage, 3)}  (nominal {NOMINAL_COVERAGE})",
        ]
        return out + (["PASSED"] if self.passed else [f"NOT PASSED: {reason}" for reason in self.reasons])


def champion_version(conn: psycopg.Connection, timeframe: str) -> str | None:
    """The ``model_version`` of the cadence's champion: the registered one's, or else that of the newest
    ``chronos-2`` row written by no registered checkpoint (the configured model's)."""
    current = model_registry.champion(conn, timeframe)
    if current is not None:
        return current.model_version
    registered = [c.model_version for c in model_registry.checkpoints(conn, timeframe)]
    row = conn.execute(
        "SELECT model_version FROM ml_predictions WHERE model_name = %s AND timeframe = %s "
        "AND model_version <> ALL(%s::text[]) ORDER BY created_at DESC, id DESC LIMIT 1",
        (MODEL_NAME, timeframe, registered),
    ).fetchone()
    return row[0] if row else None


def paired_losses(
    conn: psycopg.Connection, timeframe: str, challenger_version: str, champion: str | None, since: datetime
) -> pl.DataFrame:
    """The stored losses of the challenger and of the champion (each its ``model_version`` only) where both forecast.

    Returns one row per (symbol, as_of) with ``n_steps``, ``champion_version`` and, per side
    (``_champion``, ``_challenger``), ``scaled_abs_error``, ``mean_pinball``, ``n_below_p10``,
    ``n_above_p90``.
    """
    rows = conn.execute(_PAIRED_LOSSES, {"timeframe": timeframe, "models": [MODEL_NAME, CHALLENGER_MODEL_NAME],
                                         "since": since}).fetchall()
    losses = pl.DataFrame(rows, schema=_LOSS_SCHEMA, orient="row")
    mine = losses.filter((pl.col("model_name") == CHALLENGER_MODEL_NAME) & (pl.col("model_version") == challenger_version))
    theirs = losses.filter((pl.col("model_name") == MODEL_NAME) & (pl.col("model_version") == champion))
    return pair_losses(mine, theirs, champion)


def pair_losses(mine: pl.DataFrame, theirs: pl.DataFrame, champion_version: str | None) -> pl.DataFrame:
    """Per-forecast losses (``frames.PER_FORECAST_SCHEMA`` columns) of the challenger and the champion, paired
    on (symbol, as_of): the frame ``promotion_test`` reads."""
    values = ["scaled_abs_error", "mean_pinball", "n_below_p10", "n_above_p90"]
    joined = theirs.select("symbol", "as_of", "n_steps", *values).join(
        mine.select("symbol", "as_of", *values), on=["symbol", "as_of"], suffix="_challenger",
    ).rename({name: f"{name}_champion" for name in values})
    return joined.with_columns(pl.lit(champion_version, pl.Utf8).alias("champion_version")).sort("as_of", "symbol")


def _coverage(pairs: pl.DataFrame, side: str) -> float | None:
    steps = pairs["n_steps"].sum()
    if not steps:
        return None
    return 1.0 - (pairs[f"n_below_p10_{side}"].sum() + pairs[f"n_above_p90_{side}"].sum()) / steps


def _side(pairs: pl.DataFrame, side: str, version: str | None) -> Side:
    if pairs.is_empty():
        return Side(version, None, None, None)
    return Side(version, float(pairs[f"scaled_abs_error_{side}"].mean()), float(pairs[f"mean_pinball_{side}"].mean()),
                _coverage(pairs, side))


def promotion_test(
    pairs: pl.DataFrame, timeframe: str, since: datetime, challenger_version: str, bar: timedelta,
    min_forecasts: int = DEFAULT_MIN_FORECASTS, champion_version: str | None = None,
) -> PromotionTest:
    """Run the test on ``paired_losses``; ``bar`` is the cadence's bar, the period origins are grouped by."""
    champion, mine = _side(pairs, "champion", champion_version), _side(pairs, "challenger", challenger_version)
    reasons: list[str] = []
    if pairs.height < min_forecasts:
        reasons.append(f"only {pairs.height} paired out-of-sample forecasts, fewer than the {min_forecasts} required "
                       "(PROMOTION_MIN_FORECASTS); let the challenger shadow more windows, or backfill its shadow")
    by_origin = (
        pairs.with_columns(pl.col("as_of").dt.truncate(f"{int(bar.total_seconds())}s").alias("origin"))
        .group_by("origin")
        .agg(*(pl.col(f"{metric}_{side}").mean() for metric in ("scaled_abs_error", "mean_pinball")
               for side in ("champion", "challenger")), pl.col("n_steps").max())
        .sort("origin")
    )
    horizon = int(pairs["n_steps"].max()) if pairs.height else 1
    mae_test = pinball_test = None
    if by_origin.height > horizon:
        mae_test = diebold_mariano(by_origin["scaled_abs_error_challenger"].to_numpy(),
                                   by_origin["scaled_abs_error_champion"].to_numpy(), horizon)
        pinball_test = diebold_mariano(by_origin["mean_pinball_challenger"].to_numpy(),
                                       by_origin["mean_pinball_champion"].to_numpy(), horizon)
        for name, result in (("scaled MAE of p50", mae_test), ("scaled quantile loss", pinball_test)):
            if not result.p_value < ALPHA:
                reasons.append(f"{name} is not lower at the {ALPHA:g} level (challenger minus champion "
                               f"{result.mean_difference:+.4f}, p = {result.p_value:.3g})")
    elif pairs.height:
        reasons.append(f"{by_origin.height} origins are too few for a {horizon}-step Diebold-Mariano test")
    if champion.coverage is not None and mine.coverage is not None:
        worse = abs(mine.coverage - NOMINAL_COVERAGE) - abs(champion.coverage - NOMINAL_COVERAGE)
        if worse > COVERAGE_TOLERANCE:
            reasons.append(f"p10-p90 coverage {mine.coverage:.3f} is {worse:.3f} further from {NOMINAL_COVERAGE} than "
                           f"the champion's {champion.coverage:.3f} (tolerance {COVERAGE_TOLERANCE})")
    return PromotionTest(timeframe, since, min_forecasts, pairs.height, by_origin.height, champion, mine,
                         mae_test, pinball_test, reasons)


def evaluate_challenger(
    conn: psycopg.Connection, timeframe: str, bar: timedelta, challenger_version: str, since: datetime,
    min_forecasts: int = DEFAULT_MIN_FORECASTS,
) -> PromotionTest:
    """The promotion test of one challenger from the stored losses: its forecasts from ``since`` (its cutoff) on."""
    champion = champion_version(conn, timeframe)
    pairs = paired_losses(conn, timeframe, challenger_version, champion, since)
    return promotion_test(pairs, timeframe, since, challenger_version, bar, min_forecasts, champion)
