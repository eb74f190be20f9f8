"""Forecasts of one or more windows from their covariates: one batched model call, shaped rows, and what was left out.

An instrument is left out of a window, and the rest still forecast, when its context cannot go
to the model (``inputs``) or its forecast must not be stored (``shaping.unfit_forecasts``). A
window with no instrument left has nothing to forecast; the caller decides whether that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import polars as pl

from forecasting_pipeline.forecasting.inputs import Rejection, SeriesKey, window_model_inputs
from forecasting_pipeline.forecasting.predict import check_horizon
from forecasting_pipeline.forecasting.runner import Chronos2Runner, Prediction
from forecasting_pipeline.forecasting.shaping import drop_rejected, shape_forecasts, unfit_forecasts

# Rules of a rejection, by the check that reports them.
INPUT_RULES = frozenset({"model_input"})
QUANTILE_RULES = frozenset({"non_finite", "crossing"})
HORIZON_RULES = frozenset({"horizon"})


@dataclass(frozen=True)
class WindowForecasts:
    """The forecasts of each window, and what was left out.

    Attributes
    ----------
    forecasts
        Window key -> long forecast rows (``shaping.FORECAST_SCHEMA`` plus ``model_version``); an
        empty frame for a window with nothing to forecast.
    rejected
        Every instrument left out of a window, before or after the model call, and why.
    prediction
        The model call (quantiles, model, timings, device), or None when no window had an input.
    series, horizon, context_length
        What the model was asked for: ``series`` forecasts, of which ``distinct_series`` had contexts
        of their own (the rest repeat another window's, and share its forecast).
    """

    forecasts: dict[str, pl.DataFrame]
    rejected: list[Rejection]
    prediction: Prediction | None
    series: int
    horizon: int
    context_length: int
    distinct_series: int = 0

    @property
    def empty(self) -> dict[str, str]:
        """Window -> why it has nothing to forecast: no instrument's bars reached it, or each one's rejection."""
        out = {}
        for window, frame in self.forecasts.items():
            if not frame.is_empty():
                continue
            reasons = [f"{r.symbol}: {r.rule}: {r.message}" for r in self.rejected if r.window == window]
            out[window] = (
                f"window {window}: every instrument's forecast was rejected, so nothing is written. " + "; ".join(reasons)
                if reasons else f"window {window}: no instrument passed bar validation, so nothing is forecast or written"
            )
        return out

    def left_out(self) -> dict[str, list[str]]:
        """Symbol -> the windows it was left out of."""
        out: dict[str, list[str]] = {}
        for r in self.rejected:
            out.setdefault(r.symbol, []).append(r.window)
        return out

    def problems(self, rules: frozenset[str]) -> list[str]:
        return [str(r) for r in self.rejected if r.rule in rules]


ForecastTimes = Callable[[str, datetime, int], list[datetime]]


def forecast_windows(
    covariates: Mapping[str, pl.DataFrame],
    forecast_times: ForecastTimes,
    runner: Chronos2Runner,
    horizon: int,
    context_length: int,
) -> WindowForecasts:
    """Forecast every window's instruments in one model call.

    Parameters
    ----------
    covariates
        Window key -> per-bar model inputs of its kept instruments (``market.features``).
    forecast_times
        ``(symbol, as_of, n) -> n`` bar close times after ``as_of`` on that instrument's calendar.
    """
    check_horizon(horizon)
    keys, inputs, rejected = window_model_inputs(covariates, context_length)
    # Windows that hold the same context (window_model_inputs shares the object) are forecast once:
    # the model is deterministic and each series is forecast independently of the rest of its batch.
    distinct: dict[int, int] = {}
    at = np.array([distinct.setdefault(id(x), len(distinct)) for x in inputs], dtype=np.int64)
    unique = list({id(x): x for x in inputs}.values())
    prediction = runner.predict(unique, horizon, context_length) if unique else None
    if prediction is not None:
        prediction = replace(prediction, quantiles=prediction.quantiles[at])
    rows = _shaped(keys, prediction, forecast_times, horizon)
    unfit = unfit_forecasts(rows, horizon)
    rows = drop_rejected(rows, unfit)
    # One pass over the rows, not a filter per window: a backfill run holds hundreds of windows.
    parts = rows.partition_by("window", as_dict=True, include_key=False, maintain_order=True) if len(rows) else {}
    empty = rows.clear().drop("window")
    by_window = {window: parts.get((window,), empty) for window in covariates}
    return WindowForecasts(by_window, rejected + unfit, prediction, len(inputs), horizon, context_length, len(unique))


def _shaped(
    keys: list[SeriesKey], prediction: Prediction | None, forecast_times: ForecastTimes, horizon: int
) -> pl.DataFrame:
    quantiles = prediction.quantiles if prediction else np.empty((0, horizon, 3))
    version = prediction.model.version if prediction else None
    return shape_forecasts(keys, quantiles, forecast_times).with_columns(
        pl.lit(version, dtype=pl.Utf8).alias("model_version")
    )
