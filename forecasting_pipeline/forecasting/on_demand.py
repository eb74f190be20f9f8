"""On-demand forecasts: one series per request, checked with the chain's rules, several requests per model call.

A request names a known instrument (its bars come from the configured source, up to the newest
closed bar) or brings its own bars with a trading calendar. Either way the bars pass the chain's
validation (``market.validation``) and become a model input the way a window's instruments do
(``forecasting.inputs``); what the model cannot take is refused with the field and the reason
(``InputProblem``), before any model call.

Many series share one model call (``predict_series``). Chronos-2 pads shorter contexts and, with
``cross_learning`` off, a series' forecast depends neither on the other series of the call nor on
how long their contexts are. It does depend on the number of 16-step output patches decoded, so
series are grouped by ``ceil(horizon / 16)``: one call per group, each series answered exactly as
if it had been sent alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import polars as pl

from forecasting_pipeline.forecasting.inputs import usable_model_inputs
from forecasting_pipeline.forecasting.predict import MODEL_QUANTILE_LEVELS, QUANTILE_LEVELS
from forecasting_pipeline.forecasting.runner import Prediction
from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.calendars import last_bar_close, next_bar_closes, validate_calendar_name
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.market.sources.schema import BARS_SCHEMA, NUMERIC_COLUMNS
from forecasting_pipeline.market.validation import EXCLUDED, WARNED, Finding, ValidationConfig, validate_instrument
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.times import as_utc

OUTPUT_PATCH = 16
ON_DEMAND_WINDOW = "on-demand"
AD_HOC_SYMBOL = "AD-HOC"
MEDIAN = 0.5


class InputProblem(ValueError):
    """A request the model cannot answer: ``field`` names the part of the request, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class SeriesRequest:
    """One series ready for the model: its validated context, and what to forecast.

    ``model_input`` is ``{"target", "past_covariates"}`` as ``inputs.usable_model_inputs`` builds it,
    at most ``context_length`` bars; ``as_of`` is the close time of its last bar. ``origin`` is the
    request field the bars came from: ``symbol`` (a known instrument) or ``bars`` (the caller's).
    """

    symbol: str | None
    timeframe: str
    calendar: str
    as_of: datetime
    model_input: dict
    horizon: int
    context_length: int
    quantiles: tuple[float, ...] = QUANTILE_LEVELS
    warnings: tuple[str, ...] = ()
    origin: str = "symbol"

    @property
    def output_patches(self) -> int:
        return math.ceil(self.horizon / OUTPUT_PATCH)


@dataclass(frozen=True)
class SeriesForecast:
    """One series' answer: its forecast steps and the model call that made them."""

    request: SeriesRequest
    steps: list[dict]
    model_version: str
    device: str
    fell_back: bool
    call_series: int
    device_reason: str = ""


def level_label(level: float) -> str:
    """``0.1 -> "p10"``, ``0.05 -> "p5"``: the key of a level in a forecast step, as stored rows name p10/p50/p90."""
    return f"p{round(level * 100)}"


def check_quantiles(levels: Sequence[float]) -> tuple[float, ...]:
    """The requested levels, ascending; InputProblem unless each is one of the model's 21, once."""
    unknown = [level for level in levels if level not in MODEL_QUANTILE_LEVELS]
    if unknown:
        raise InputProblem("quantiles", f"{unknown} are not levels of Chronos-2; choose from {list(MODEL_QUANTILE_LEVELS)}")
    if len(set(levels)) != len(levels) or not levels:
        raise InputProblem("quantiles", "give each level once, and at least one")
    return tuple(sorted(levels))


def known_series(
    source: BarSource,
    instrument: Instrument,
    cadence: Cadence,
    horizon: int,
    context_length: int,
    quantiles: tuple[float, ...],
    now: datetime,
    rules: ValidationConfig,
) -> SeriesRequest:
    """A known instrument's bars up to its newest closed bar at ``now``, validated as the chain does."""
    end = last_bar_close(instrument.calendar, cadence.name, now)
    read = read_window_bars(
        source, [instrument], cadence.name, {ON_DEMAND_WINDOW: end}, max(context_length, rules.min_history_bars), rules
    )
    validated = read.windows[ON_DEMAND_WINDOW]
    if instrument.symbol in validated.excluded:
        raise InputProblem("symbol", "; ".join(m.split(": ", 1)[1] for m in read.exclusion_messages()))
    warnings = tuple(f"{f.rule}: {f.message}" for f in validated.findings if f.action == WARNED)
    return _series(validated.bars, instrument, cadence, horizon, context_length, quantiles, "symbol", warnings)


def ad_hoc_series(
    bars: Sequence[Mapping[str, object]],
    calendar: str,
    cadence: Cadence,
    horizon: int,
    context_length: int,
    quantiles: tuple[float, ...],
    rules: ValidationConfig,
    label: str | None = None,
) -> SeriesRequest:
    """A caller's own bars (``ts`` the close time, naive means UTC), checked with the chain's rules.

    Unlike the chain, which sorts a source's bars and drops identical duplicates, a request's
    timestamps must already be strictly ascending: a caller who sends them out of order has made
    a mistake worth hearing about.
    """
    try:
        validate_calendar_name(calendar)
    except ValueError as exc:
        raise InputProblem("calendar", str(exc)) from None
    times = [as_utc(bar["ts"]) for bar in bars]
    _check_ascending(times)
    frame = pl.DataFrame(
        {"symbol": [label or AD_HOC_SYMBOL] * len(bars), "ts": times,
         **{c: [_number(bar[c]) for bar in bars] for c in NUMERIC_COLUMNS}},
        schema=BARS_SCHEMA,
    )
    instrument = Instrument(label or AD_HOC_SYMBOL, "ad-hoc", calendar)
    kept, findings = validate_instrument(frame, instrument, cadence.name, times[-1] if times else _EPOCH, rules)
    excluded = [f for f in findings if f.action == EXCLUDED]
    if excluded:
        raise InputProblem(_bar_field(excluded[0], times), f"{excluded[0].rule}: {excluded[0].message}")
    warnings = tuple(f"{f.rule}: {f.message}" for f in findings if f.action == WARNED)
    series = _series(kept, instrument, cadence, horizon, context_length, quantiles, "bars", warnings)
    return replace(series, symbol=label)


def predict_series(
    predict: Callable[[list[dict], int, int], Prediction], series: Sequence[SeriesRequest]
) -> list[SeriesForecast | InputProblem]:
    """Forecast every series, one model call per number of output patches; answers in the order given.

    ``predict(inputs, horizon, context_length)`` runs one model call and returns every one of the
    model's 21 levels, unsorted (``Chronos2Runner.predict_here(..., MODEL_QUANTILE_LEVELS, sort=False)``).
    A series whose forecast is not finite is answered with an ``InputProblem``, the others as usual.
    """
    answers: list[SeriesForecast | InputProblem | None] = [None] * len(series)
    groups: dict[int, list[int]] = {}
    for index, one in enumerate(series):
        groups.setdefault(one.output_patches, []).append(index)
    for members in groups.values():
        chosen = [series[i] for i in members]
        done = predict(
            [s.model_input for s in chosen], max(s.horizon for s in chosen), max(s.context_length for s in chosen)
        )
        for index, one, raw in zip(members, chosen, done.quantiles, strict=True):
            answers[index] = _answer(one, raw, done, len(chosen))
    return answers  # type: ignore[return-value]


def forecast_steps(series: SeriesRequest, raw: np.ndarray) -> list[dict]:
    """Step objects as stored rows hold them (``step, ts, p10, p50, p90, close``), from all 21 raw levels.

    The requested levels are picked and then sorted per step, as the chain sorts its three, so
    that the default answer equals the chain's row for the same bars; ``close`` is the median.
    """
    columns = [MODEL_QUANTILE_LEVELS.index(level) for level in series.quantiles]
    chosen = np.sort(raw[: series.horizon, columns], axis=-1)
    if MEDIAN in series.quantiles:
        median = chosen[:, series.quantiles.index(MEDIAN)]
    else:
        median = raw[: series.horizon, MODEL_QUANTILE_LEVELS.index(MEDIAN)]
    times = next_bar_closes(series.calendar, series.timeframe, series.as_of, series.horizon)
    return [
        {"step": step, "ts": ts.isoformat(),
         **{level_label(level): float(value) for level, value in zip(series.quantiles, values, strict=True)},
         "close": float(close)}
        for step, (ts, values, close) in enumerate(zip(times, chosen, median, strict=True), start=1)
    ]


# ---------------------------------------------------------------------------
# helpers

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _series(
    bars: pl.DataFrame, instrument: Instrument, cadence: Cadence, horizon: int, context_length: int,
    quantiles: tuple[float, ...], origin: str, warnings: tuple[str, ...],
) -> SeriesRequest:
    keys, inputs, rejected = usable_model_inputs(engineer_covariates(bars), ON_DEMAND_WINDOW, context_length)
    if rejected:
        raise InputProblem(origin, rejected[0].message)
    return SeriesRequest(
        instrument.symbol, cadence.name, instrument.calendar, keys[0].as_of, inputs[0], horizon, context_length,
        quantiles, warnings, origin,
    )


def _check_ascending(times: list[datetime]) -> None:
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            raise InputProblem(f"bars[{i}].ts", f"duplicate timestamp {times[i].isoformat()} (also bars[{i - 1}].ts)")
        if times[i] < times[i - 1]:
            raise InputProblem(
                f"bars[{i}].ts",
                f"{times[i].isoformat()} is before bars[{i - 1}].ts {times[i - 1].isoformat()}: bars must be in "
                "ascending time order",
            )


def _number(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _bar_field(finding: Finding, times: list[datetime]) -> str:
    """``bars[i]`` for a finding about one bar, ``bars`` for one about the whole series."""
    if finding.ts is None:
        return "bars"
    try:
        return f"bars[{times.index(finding.ts)}]"
    except ValueError:
        return "bars"


def _answer(series: SeriesRequest, raw: np.ndarray, done: Prediction, call_series: int) -> SeriesForecast | InputProblem:
    window = raw[: series.horizon]
    if not np.isfinite(window).all():
        step = int(np.argmax(~np.isfinite(window).all(axis=-1))) + 1
        return InputProblem(series.origin, f"the model's forecast is not finite at step {step}; nothing can be answered for it")
    return SeriesForecast(
        series, forecast_steps(series, raw), done.model.version, done.device_run.device, done.device_run.fell_back,
        call_series, done.device_run.reason,
    )
