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

    # One example only: an ad-hoc series needs at least 64 valid bars, too long to show here.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"symbol": "AAPL", "timeframe": "1d", "horizon": 10}]},
    )

    symbol: str | None = Field(None, max_length=32, description="A symbol of the instrument universe; a label when bars are given.")
    timeframe: str = Field(description="`1h` or `1d`.")
    horizon: int | None = Field(None, ge=1, le=MAX_HORIZON, description="Steps ahead; the timeframe's default (24 or 10) when unset.")
    bars: list[Bar] | None = Field(
        None, min_length=1, description="Ad-hoc bars, oldest first, one per bar close; at least 64 that pass validation.",
    )
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
    device_reason: str = Field(
        "", description="Why there: e.g. the GPU lock was busy, which on-demand work never waits for (it takes the CPU).",
    )
    seconds: float = Field(description="Time this service spent on the request.")
    batch_series: int = Field(description="Series in the model call that answered this one.")
    warnings: list[str] = Field(default_factory=list, description="What validation warned about (gaps, jumps).")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Items are plain objects on purpose: an item that is not a valid ForecastRequest is answered in
    # `results` with its own 422 entry, and the other items are still forecast.
    requests: list[dict[str, Any]] = Field(
        min_length=1, description="Items shaped like the /predict-chronos2 body (`ForecastRequest`). An item that "
        "is not one gets its own entry `{index, status: 422, errors}` in `results`; the others are answered.",
    )


class BatchItemError(BaseModel):
    index: int
    status: int
    errors: list[Problem]


class BatchAnswer(BaseModel):
    results: list[ForecastAnswer | BatchItemError]


def refusals(*statuses: int) -> dict[int | str, dict]:
    """The documented error answers of a route: ``ErrorAnswer`` bodies, with the headers that come with them."""
    headers = {
        401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
        503: {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}},
    }
    described = {
        400: "A body that is not JSON, or a malformed or unknown parameter.",
        401: "A missing or wrong bearer token (when the service has one).",
        404: "A known instrument with no stored forecast of the model yet.",
        409: "A run's batch for another model than this service holds.",
        413: "A body over the size limit.",
        422: "A request the model cannot answer, or over a limit; `errors` names the field.",
        503: "The model is loading or failed to load, the on-demand queue is full, the request's deadline passed, "
             "the database is unavailable, or the service is stopping.",
    }
    return {status: {"model": ErrorAnswer, "description": described[status], **({"headers": headers[status]} if status in headers else {})}
            for status in statuses}
