"""Request and answer models of the HTTP API: the contract that the OpenAPI page (``/docs``), the errors and the tests share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forecasting_pipeline.forecasting.predict import MAX_HORIZON, MODEL_QUANTILE_LEVELS


class Bar(BaseModel):
    """One bar of an ad-hoc series; ``ts`` is the time it closed (naive means UTC)."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class ForecastRequest(BaseModel):
    """A known instrument (``symbol``), or an ad-hoc series (``bars`` with a ``calendar``; ``symbol`` is then only a label)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"symbol": "AAPL", "timeframe": "1d", "horizon": 10},
            {"timeframe": "1h", "horizon": 24, "calendar": "24/7",
             "bars": [{"ts": "2026-03-02T15:00:00Z", "open": 1.0, "high": 1.1, "low": 0.9, "close": 1.05, "volume": 10}]},
        ]},
    )

    symbol: str | None = Field(None, max_length=32, description="A symbol of the instrument universe; a label when bars are given.")
    timeframe: str = Field(description="`1h` or `1d`.")
    horizon: int | None = Field(None, ge=1, le=MAX_HORIZON, description="Steps ahead; the timeframe's default (24 or 10) when unset.")
    bars: list[Bar] | None = Field(None, min_length=1, description="Ad-hoc bars, oldest first, one per bar close.")
    calendar: str | None = Field(None, description="With bars: `24/7`, `24/5` or an exchange_calendars code such as `XNYS`.")
    context_length: int | None = Field(None, ge=1, description="Bars the model reads; the timeframe's default (2048 or 1024) when unset.")
    quantiles: list[float] | None = Field(
        None, description=f"Levels to answer, any of Chronos-2's {len(MODEL_QUANTILE_LEVELS)}: {list(MODEL_QUANTILE_LEVELS)}; "
        "default 0.1, 0.5, 0.9.",
    )


class Problem(BaseModel):
    field: str | None = Field(description="The part of the request at fault, e.g. `bars[3].close`.")
    reason: str


class ErrorAnswer(BaseModel):
    errors: list[Problem]


class ForecastAnswer(BaseModel):
    """A forecast with the stored rows' step objects (``step``, ``ts`` on the instrument's calendar, one key per level, ``close`` = p50)."""

    symbol: str | None
    timeframe: str
    model_name: str
    model_version: str
    as_of: datetime = Field(description="Close time of the last bar the forecast used.")
    predictions: list[dict[str, Any]]
    device: str = Field(description="Where the model call ran: `cpu` or `cuda`.")
    seconds: float = Field(description="Time this service spent on the request.")
    batch_series: int = Field(description="Series in the model call that answered this one.")
    warnings: list[str] = Field(default_factory=list, description="What validation warned about (gaps, jumps).")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(
        min_length=1, description="Items shaped like the /predict-chronos2 body.",
        json_schema_extra={"items": {"$ref": "#/components/schemas/ForecastRequest"}},
    )


class BatchItemError(BaseModel):
    index: int
    status: int
    errors: list[Problem]


class BatchAnswer(BaseModel):
    results: list[ForecastAnswer | BatchItemError]
