"""From a request body to model answers: which series, checked how, and through the scheduler's interactive lane.

This is the translation layer between the API's models (``schemas``) and the domain
(``forecasting.on_demand``): it applies the service's limits and defaults, finds the instrument,
and runs every model call on the model worker (``scheduler``), before any run's next chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

from pydantic import ValidationError

from forecasting_pipeline.forecasting.device import LockMode
from forecasting_pipeline.forecasting.on_demand import (
    InputProblem,
    SeriesForecast,
    SeriesRequest,
    ad_hoc_series,
    check_quantiles,
    known_series,
    predict_series,
)
from forecasting_pipeline.forecasting.predict import MODEL_QUANTILE_LEVELS, QUANTILE_LEVELS
from forecasting_pipeline.forecasting.runner import Chronos2Runner, Prediction
from forecasting_pipeline.market.cadences import CADENCES, cadence_named
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.market.validation import ValidationConfig
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.errors import Refusal, validation_problems
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
from forecasting_pipeline.serving.api.scheduler import ModelScheduler
from forecasting_pipeline.serving.api.schemas import ForecastRequest
from forecasting_pipeline.storage.ml_predictions import MODEL_NAME

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ItemRefused:
    """A batch item that cannot be answered: its status and problems as (field, reason)."""

    status: int
    problems: list[tuple[str, str]]


class OnDemandForecaster:
    """Turns requests into series (on the caller's thread) and answers them through the scheduler's interactive lane."""

    def __init__(
        self, config: ServiceConfig, runner: Chronos2Runner, source: BarSource, instruments: Sequence[Instrument],
        scheduler: ModelScheduler, metrics: ServiceMetrics, clock: Clock = utc_now, rules: ValidationConfig | None = None,
    ) -> None:
        self.config, self.runner, self.source, self.scheduler, self.metrics = config, runner, source, scheduler, metrics
        self.instruments = {i.symbol: i for i in instruments}
        self.clock = clock
        self.rules = rules or ValidationConfig()

    # -------------------------------------------------------------- requests -> series

    def check_cost(self, requests: Sequence[ForecastRequest], field: str) -> None:
        """422 naming the limit when the requests together cost more than ``max_cost`` (series x context x horizon).

        Counted from what was asked (or the timeframe's defaults), before any bars are read.
        """
        cost = sum(_request_cost(r, self.config.max_bars) for r in requests)
        if cost > self.config.max_cost:
            self.metrics.rejected("cost")
            raise Refusal(422, field, f"series x context x horizon = {cost:,}, over this service's limit of "
                          f"{self.config.max_cost:,} (PREDICT_MAX_COST): ask for fewer series, a shorter context or horizon")

    def series(self, request: ForecastRequest) -> SeriesRequest:
        """The series a request asks for, checked; InputProblem naming the field otherwise."""
        try:
            cadence = cadence_named(request.timeframe)
        except ValueError:
            raise InputProblem("timeframe", f"unknown timeframe {request.timeframe!r}; known timeframes: {', '.join(CADENCES)}") from None
        horizon = request.horizon or cadence.horizon
        # The timeframe's default context, as far as this service's bar limit allows; a longer one asked for is refused.
        context = request.context_length or min(cadence.context_length, self.config.max_bars)
        if context > self.config.max_bars:
            raise InputProblem("context_length", f"{context} is over this service's limit of {self.config.max_bars} bars")
        levels = check_quantiles(request.quantiles) if request.quantiles is not None else QUANTILE_LEVELS
        if request.bars is not None:
            if request.calendar is None:
                raise InputProblem("calendar", "bars need the calendar they trade on: '24/7', '24/5' or an exchange code such as 'XNYS'")
            if len(request.bars) > self.config.max_bars:
                raise InputProblem("bars", f"{len(request.bars)} bars, over this service's limit of {self.config.max_bars}")
            bars = [bar.model_dump() for bar in request.bars]
            return ad_hoc_series(bars, request.calendar, cadence, horizon, context, levels, self.rules, request.symbol)
        if request.symbol is None:
            raise InputProblem("symbol", "give a known instrument's symbol, or bars with a calendar")
        instrument = self.instruments.get(request.symbol)
        if instrument is None:
            raise InputProblem("symbol", f"unknown symbol {request.symbol!r}; known symbols: {', '.join(self.instruments)}")
        if request.calendar is not None:
            raise InputProblem("calendar", f"only for ad-hoc bars: {instrument.symbol} trades on {instrument.calendar}")
        return known_series(self.source, instrument, cadence, horizon, context, levels, self.clock(), self.rules)

    @staticmethod
    def parse_item(index: int, item: dict) -> ForecastRequest | ItemRefused:
        """One batch item as a request, or why it is not one (its fields prefixed ``requests[i]``)."""
        try:
            return ForecastRequest.model_validate(item)
        except ValidationError as exc:
            return ItemRefused(422, validation_problems(exc.errors(include_url=False), f"requests[{index}]"))

    def item_series(self, index: int, request: ForecastRequest | ItemRefused) -> SeriesRequest | ItemRefused:
        """One batch item's series, or why it is refused."""
        if isinstance(request, ItemRefused):
            return request
        try:
            return self.series(request)
        except InputProblem as exc:
            return ItemRefused(422, [(f"requests[{index}].{exc.field}", exc.reason)])

    # -------------------------------------------------------------- series -> answers

    async def forecast(self, series: Sequence[SeriesRequest]) -> list[SeriesForecast | InputProblem]:
        """Answers in order; ``scheduler.Overloaded`` past the queue bound or the deadline."""
        return await self.scheduler.interactive(series, self.config.deadline_s)

    def answer(self, series: list[SeriesRequest], lock: LockMode) -> list[SeriesForecast | InputProblem]:
        """One interactive call of the scheduler, on the model worker."""
        return predict_series(partial(self._predict, lock=lock), series)

    def _predict(self, inputs: list[dict], horizon: int, context_length: int, lock: LockMode) -> Prediction:
        done = self.runner.predict_here(
            inputs, horizon, context_length, quantile_levels=MODEL_QUANTILE_LEVELS, sort=False, lock=lock
        )
        self.metrics.record_call("interactive", len(inputs), done)
        return done


def _request_cost(request: ForecastRequest, max_bars: int) -> int:
    try:
        cadence = cadence_named(request.timeframe)
    except ValueError:
        return 0  # refused later, naming the timeframe
    context = request.context_length or min(cadence.context_length, max_bars)
    return context * (request.horizon or cadence.horizon)


def answer_json(answer: SeriesForecast, seconds: float) -> dict:
    """The answer of one series, as ``schemas.ForecastAnswer``."""
    series = answer.request
    return {
        "symbol": series.symbol, "timeframe": series.timeframe, "model_name": MODEL_NAME,
        "model_version": answer.model_version, "as_of": series.as_of.isoformat(), "predictions": answer.steps,
        "device": answer.device, "device_reason": answer.device_reason, "seconds": round(seconds, 4),
        "batch_series": answer.call_series,
        "warnings": list(series.warnings),
    }


def since(started: float) -> float:
    return time.perf_counter() - started
