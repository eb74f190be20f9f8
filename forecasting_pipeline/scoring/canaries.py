"""The canaries on the scores: a regime shift between two models, a band that misses too often, an ensemble
that falls behind its best member.

* The loss canary: the rolling mean over forecast dates of (loss of model A - loss of model B);
  a sign of it that flips and stays flipped is a change of which model is better.
* The coverage alarm: Kupiec's test of each banded model's latest ``rolling.ROLLING_WINDOW`` forecast dates.
* The ensemble canary: the same rolling difference between the ensemble and its best member; it
  fires when the ensemble has been worse by more than the deadband for ``CANARY_PERSIST`` dates.

Both take per-forecast losses (``frames.PER_FORECAST_SCHEMA``), the rows a scoring run stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from forecasting_pipeline.scoring.baselines import BASELINE_MODELS, BASELINE_RANDOM_WALK, BASELINE_RW_VOL
from forecasting_pipeline.scoring.coverage import CoverageAlarm, coverage_alarm
from forecasting_pipeline.scoring.frames import require_columns
from forecasting_pipeline.storage.ml_predictions import ENSEMBLE_MODEL_NAME, KRONOS_MODEL_NAME, MODEL_NAME

CANARY_WINDOW = 20
"""Forecast dates (distinct ``as_of``) in the rolling mean of the loss difference.

At each ``as_of`` the per-forecast difference is first averaged over the
symbols both models forecast, so with daily forecasts over 23 instruments the
rolling mean covers four trading weeks and up to 460 paired forecasts: long
enough that one bad day cannot move it far, short enough to follow a change of
regime within a month.
"""

CANARY_PERSIST = 5
"""Consecutive points the rolling difference must stay on the new side of the deadband.

Successive points of a rolling mean share ``CANARY_WINDOW - 1`` of their
``CANARY_WINDOW`` inputs, so a single outlier forecast date can hold the mean
on one side for a while; five consecutive dates (a trading week of daily
forecasts) beyond the deadband is what counts as a flip.
"""

CANARY_DEADBAND = 0.05
"""Smallest |rolling difference| of scaled loss that counts as a sign, in naive-scale units.

Losses are divided by the mean absolute one-bar change, so 0.05 is a difference of 5% of a
typical one-bar move. Smaller rolling differences are treated as "no model is better": they
neither establish a sign nor confirm a flip, so noise around zero does not fire. Keep the
deadband at about five times the rolling sd, ``5 * sd(diff) / sqrt(CANARY_WINDOW)``, and widen
it if the observed per-date sd of ``diff`` is larger than that allows (docs/scores.md,
for the false-alarm rates simulated at several noise levels).
"""

CANARY_RECENT_DATES = CANARY_WINDOW
"""Forecast dates back from the latest within which a confirmed sign flip raises the warning.

A flip is news while the new sign is young: once it has held for ``CANARY_RECENT_DATES`` more
forecast dates (about a month of daily forecasts) it is the established regime, the warning
clears, and the flip stays listed in the check's metadata and visible in the plot.
"""

LOSS_COLUMNS = ("mean_pinball", "scaled_abs_error")


@dataclass(frozen=True)
class SignFlip:
    """One confirmed change of sign of a rolling loss difference.

    Attributes
    ----------
    started_index, confirmed_index
        Positions in the input series of the first point on the new side of the deadband and of
        the point that completed ``persist`` of them.
    started_at, confirmed_at
        The ``times`` at those positions, or None when no times were given.
    from_sign, to_sign
        -1 or +1. For ``rolling_model_comparison`` output (loss of model A minus loss of model
        B), -1 to +1 means model A went from better to worse.
    value
        The rolling difference at ``confirmed_index``.
    """

    started_index: int
    confirmed_index: int
    started_at: datetime | None
    confirmed_at: datetime | None
    from_sign: int
    to_sign: int
    value: float


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

    @property
    def latest_rolling_diff(self) -> float | None:
        values = self.comparison["rolling_diff"].drop_nulls()
        return float(values[-1]) if values.len() else None


def _pairs(per_forecast: pl.DataFrame, model_a: str, model_b: str, loss_column: str) -> pl.DataFrame:
    def one_model(name: str, suffix: str) -> pl.DataFrame:
        rows = per_forecast.filter(pl.col("model_name") == name)
        if rows.is_empty():
            raise ValueError(f"per_forecast_losses has no rows for model {name!r}")
        return rows.select("symbol", "as_of", pl.col("levels").alias(f"levels{suffix}"),
                           pl.col(loss_column).alias(f"loss{suffix}"))

    pairs = one_model(model_a, "_a").join(one_model(model_b, "_b"), on=["symbol", "as_of"], how="inner")
    if loss_column == "mean_pinball" and pairs.filter(pl.col("levels_a") != pl.col("levels_b")).height:
        raise ValueError(
            f"{model_a!r} and {model_b!r} score different numbers of quantile levels, so their "
            "mean_pinball is not comparable; use loss_column='scaled_abs_error'"
        )
    return pairs


def rolling_model_comparison(
    per_forecast: pl.DataFrame,
    model_a: str,
    model_b: str,
    window: int = CANARY_WINDOW,
    loss_column: str = "mean_pinball",
) -> pl.DataFrame:
    """Rolling mean over forecast dates of (loss of model A - loss of model B).

    Negative means model A has the lower loss. Only (symbol, as_of) pairs both models forecast
    are compared; at each ``as_of`` the differences are averaged over symbols, then a rolling
    mean runs over ``window`` dates. To watch one instrument, filter ``per_forecast`` first.

    Parameters
    ----------
    per_forecast
        Per-forecast losses (``frames.PER_FORECAST_SCHEMA``).
    model_a, model_b
        Model names to compare.
    window
        Forecast dates in the rolling mean.
    loss_column
        ``"mean_pinball"`` (only when both models have the same ``levels``: a central-only
        model's mean pinball is half its absolute error and not comparable with a banded
        model's) or ``"scaled_abs_error"`` (error of p50, comparable between any two models).

    Returns
    -------
    pl.DataFrame
        One row per shared ``as_of``, sorted: ``n_pairs`` (UInt32), ``diff`` (mean difference
        that date) and ``rolling_diff`` (null for the first ``window - 1`` dates), in naive-scale units.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 forecast date, got {window}")
    if model_a == model_b:
        raise ValueError(f"model_a and model_b are both {model_a!r}; compare two different models")
    if loss_column not in LOSS_COLUMNS:
        raise ValueError(f"loss_column must be 'mean_pinball' or 'scaled_abs_error', got {loss_column!r}")
    require_columns(per_forecast, ("model_name", "symbol", "as_of", "levels", loss_column), "per_forecast_losses")
    return (
        _pairs(per_forecast, model_a, model_b, loss_column)
        .group_by("as_of")
        .agg(pl.len().alias("n_pairs"), (pl.col("loss_a") - pl.col("loss_b")).mean().alias("diff"))
        .sort("as_of")
        .with_columns(pl.col("diff").rolling_mean(window, min_samples=window).alias("rolling_diff"))
    )


def _sign(value: float | None, deadband: float) -> int:
    if value is None or math.isnan(value) or abs(value) <= deadband:
        return 0
    return 1 if value > 0 else -1


def _as_list(values: pl.Series | Sequence | None) -> list | None:
    if values is None:
        return None
    return values.to_list() if isinstance(values, pl.Series) else list(values)


def detect_sign_flip(
    diff: pl.Series | Sequence[float | None],
    persist: int = CANARY_PERSIST,
    deadband: float = CANARY_DEADBAND,
    times: pl.Series | Sequence[datetime] | None = None,
) -> list[SignFlip]:
    """Confirmed flips of the sign of a rolling difference.

    A point "has a sign" when |diff| > ``deadband``. The first run of ``persist`` consecutive
    points with the same sign sets the current sign without an event; afterwards, ``persist``
    consecutive points with the opposite sign are a flip. Points inside the deadband, or null,
    break a run without changing the current sign.

    Parameters
    ----------
    diff
        Rolling difference in time order, shape (n,), e.g. ``rolling_diff`` of ``rolling_model_comparison``.
    persist
        Consecutive points on the new side needed to confirm a flip (>= 1).
    deadband
        Smallest |diff| that counts as a sign (>= 0), in the units of ``diff``.
    times
        Optional labels of the points, shape (n,), e.g. ``as_of``.
    """
    if persist < 1:
        raise ValueError(f"persist must be at least 1 point, got {persist}")
    if deadband < 0 or math.isnan(deadband):
        raise ValueError(f"deadband must be a non-negative number, got {deadband}")
    values, labels = _as_list(diff), _as_list(times)
    if labels is not None and len(labels) != len(values):
        raise ValueError(f"times has {len(labels)} points but diff has {len(values)}")

    events: list[SignFlip] = []
    current, run_sign, run_start, run_length = 0, 0, 0, 0  # current: established sign, 0 until the first run
    for i, value in enumerate(values):
        sign = _sign(value, deadband)
        if sign == 0 or sign == current:
            run_sign, run_length = 0, 0
            continue
        if sign != run_sign:
            run_sign, run_start, run_length = sign, i, 0
        run_length += 1
        if run_length < persist:
            continue
        if current != 0:
            events.append(SignFlip(
                started_index=run_start, confirmed_index=i,
                started_at=None if labels is None else labels[run_start],
                confirmed_at=None if labels is None else labels[i],
                from_sign=current, to_sign=sign, value=float(value),
            ))
        current, run_sign, run_length = sign, 0, 0
    return events


def canary_pair(per_forecast: pl.DataFrame) -> tuple[str, str] | None:
    """Chronos-2 against Kronos when both have scored forecasts, else a model against the random walk."""
    present = set(per_forecast["model_name"].unique().to_list())
    models = sorted(present - set(BASELINE_MODELS))
    if MODEL_NAME in models and KRONOS_MODEL_NAME in models:
        return MODEL_NAME, KRONOS_MODEL_NAME
    first = MODEL_NAME if MODEL_NAME in models else (models[0] if models else None)
    if first is None or BASELINE_RANDOM_WALK not in present:
        return None
    return first, BASELINE_RANDOM_WALK


def loss_canary(per_forecast: pl.DataFrame) -> LossCanary | None:
    """The regime-shift canary: sign flips of the rolling loss difference of two models.

    The pair is ``canary_pair``'s. The loss is the mean pinball when both models score the same
    quantile levels, else the scaled absolute error of p50 (Kronos and the random walk have no
    band). Thresholds: ``CANARY_WINDOW``, ``CANARY_PERSIST``, ``CANARY_DEADBAND`` and
    ``CANARY_RECENT_DATES``. None when there is no pair or it shares no forecast.
    """
    pair = canary_pair(per_forecast) if per_forecast.height else None
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
    return LossCanary(a, b, loss_column, comparison, flips, [f for f in flips if f.confirmed_index >= first_recent])


def coverage_alarms(coverage: pl.DataFrame) -> dict[str, CoverageAlarm]:
    """Per model (baselines left out), the Kupiec alarm of its latest point of ``rolling.rolling_coverage``."""
    latest = (
        coverage.filter(~pl.col("model_name").is_in(BASELINE_MODELS))
        .sort("model_name", "as_of")
        .group_by("model_name", maintain_order=True)
        .last()
    )
    return {
        name: coverage_alarm(n_obs, below + above)
        for name, n_obs, below, above in latest.select("model_name", "n_obs", "n_below_p10", "n_above_p90").iter_rows()
    }



ENSEMBLE_MEMBERS = (MODEL_NAME, KRONOS_MODEL_NAME, BASELINE_RW_VOL)
"""The models the ensemble combines, as scoring names them."""


@dataclass(frozen=True)
class EnsembleCanary:
    """The ensemble against its best member over the reviewed forecasts.

    Attributes
    ----------
    best_member
        The member with the lowest scaled absolute error of p50 on the forecasts it shares with
        the ensemble (the loss every member has, point members included).
    loss_column
        What the two are compared on: ``mean_pinball`` when the best member has a band, else
        ``scaled_abs_error``.
    mean_losses
        Mean ``loss_column`` of the ensemble and of each member on the shared forecasts (each
        member with its own levels; for ``scaled_abs_error`` every model is comparable).
    comparison
        ``rolling_model_comparison`` of the ensemble minus the best member.
    fired
        The rolling difference has been above ``CANARY_DEADBAND`` (the ensemble worse) for the
        last ``CANARY_PERSIST`` forecast dates.
    """

    best_member: str
    loss_column: str
    mean_losses: dict[str, float]
    comparison: pl.DataFrame
    fired: bool

    @property
    def latest_rolling_diff(self) -> float | None:
        values = self.comparison["rolling_diff"].drop_nulls()
        return float(values[-1]) if values.len() else None


def ensemble_canary(per_forecast: pl.DataFrame) -> EnsembleCanary | None:
    """The ensemble against its best member; None when the ensemble or every member lacks scored forecasts."""
    require_columns(per_forecast, ("model_name", "symbol", "as_of", "levels", "mean_pinball", "scaled_abs_error"),
                    "per_forecast_losses")
    ensemble = per_forecast.filter(pl.col("model_name") == ENSEMBLE_MODEL_NAME).select("symbol", "as_of")
    shared = per_forecast.filter(pl.col("model_name").is_in(ENSEMBLE_MEMBERS)).join(
        ensemble, on=["symbol", "as_of"], how="semi")
    if ensemble.is_empty() or shared.is_empty():
        return None
    by_member = shared.group_by("model_name").agg(
        pl.col("scaled_abs_error").mean(), pl.col("mean_pinball").mean(), pl.col("levels").max()
    ).sort("scaled_abs_error", "model_name")
    best, levels = by_member.row(0)[0], by_member.row(0)[3]
    loss_column = "mean_pinball" if levels == 3 else "scaled_abs_error"
    comparison = rolling_model_comparison(per_forecast, ENSEMBLE_MODEL_NAME, best, CANARY_WINDOW, loss_column)
    mine = per_forecast.filter(pl.col("model_name") == ENSEMBLE_MODEL_NAME).join(
        shared.filter(pl.col("model_name") == best).select("symbol", "as_of"), on=["symbol", "as_of"], how="semi")
    losses = {ENSEMBLE_MODEL_NAME: float(mine[loss_column].mean())}
    losses |= {m: float(v) for m, v in by_member.select("model_name", loss_column).iter_rows()}
    tail = comparison["rolling_diff"].drop_nulls().tail(CANARY_PERSIST)
    fired = tail.len() == CANARY_PERSIST and bool((tail > CANARY_DEADBAND).all())
    return EnsembleCanary(best, loss_column, losses, comparison, fired)
