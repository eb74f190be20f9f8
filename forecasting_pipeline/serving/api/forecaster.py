"""From a request body to model answers: which series, checked how, and through the micro-batcher.

This is the translation layer between the API's models (``schemas``) and the domain
(``forecasting.on_demand``): it applies the service's limits and defaults, finds the instrument,
and runs every model call through the batcher on the model worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import ValidationError

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
from forecasting_pipeline.serving.api.batcher import MicroBatcher, ModelWorker
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.errors import validation_problems
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
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
    """Turns requests into series (on the caller's thread) and answers them through the micro-batcher."""

    def __init__(
        self, config: ServiceConfig, runner: Chronos2Runner, source: BarSource, instruments: Sequence[Instrument],
        worker: ModelWorker, metrics: ServiceMetrics, clock: Clock = utc_now, rules: ValidationConfig | None = None,
    ) -> None:
        self.config, self.runner, self.source, self.worker, self.metrics = config, runner, source, worker, metrics
        self.instruments = {i.symbol: i for i in instruments}
        self.clock = clock
        self.rules = rules or ValidationConfig()
        self.batcher: MicroBatcher[SeriesRequest, SeriesForecast | InputProblem] = MicroBatcher(
            self._answer, config.batch_wait_s, config.batch_max_series
        )

    # -------------------------------------------------------------- requests -> series

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

    def batch_item(self, index: int, item: dict) -> SeriesRequest | ItemRefused:
        """One batch item's series, or why it is refused (its fields prefixed ``requests[i]``)."""
        prefix = f"requests[{index}]"
        try:
            return self.series(ForecastRequest.model_validate(item))
        except ValidationError as exc:
            return ItemRefused(422, validation_problems(exc.errors(include_url=False), prefix))
        except InputProblem as exc:
            return ItemRefused(422, [(f"{prefix}.{exc.field}", exc.reason)])

    # -------------------------------------------------------------- series -> answers

    async def forecast(self, series: Sequence[SeriesRequest]) -> list[SeriesForecast | InputProblem]:
        return await self.batcher.submit(series)

    async def _answer(self, series: list[SeriesRequest]) -> list[SeriesForecast | InputProblem]:
        return await self.worker.run(predict_series, self._predict, series)

    def _predict(self, inputs: list[dict], horizon: int, context_length: int) -> Prediction:
        done = self.runner.predict_here(inputs, horizon, context_length, quantile_levels=MODEL_QUANTILE_LEVELS, sort=False)
        self.metrics.record_call("http", len(inputs), done)
        return done


def answer_json(answer: SeriesForecast, seconds: float) -> dict:
    """The answer of one series, as ``schemas.ForecastAnswer``."""
    series = answer.request
    return {
        "symbol": series.symbol, "timeframe": series.timeframe, "model_name": MODEL_NAME,
        "model_version": answer.model_version, "as_of": series.as_of.isoformat(), "predictions": answer.steps,
        "device": answer.device, "seconds": round(seconds, 4), "batch_series": answer.call_series,
        "warnings": list(series.warnings),
    }


def since(started: float) -> float:
    return time.perf_counter() - started
