"""The service's OpenAPI document, bound to what this service was started with: its instrument universe and limits.

FastAPI writes the document from the routes' declarations, which cannot know the configured
universe, the bar limit or the validation rules. Left at that, any string of the symbol pattern
would be a valid symbol by the document and then be refused with a 422, and a client or a
schema-driven tool (a generated client, an OpenAPI fuzzer) could only find the real values by
trial. Bound, the document lists them: a parameter that names an instrument of the universe is
an enum of its symbols, and a forecast request is either a known instrument or ad-hoc bars with
their calendar, within this service's limits. The checks in the handlers stay as they are; the
document now says what they accept.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from forecasting_pipeline.forecasting.predict import MODEL_QUANTILE_LEVELS
from forecasting_pipeline.market.calendars import CALENDAR_24_5, CALENDAR_24_7, exchange_calendar_names
from forecasting_pipeline.storage.ml_predictions import TIMEFRAMES

# Marks a declared parameter schema that names an instrument of the universe: its value lists what
# else the parameter takes ("" where empty means absent). Bound, the schema is an enum of both.
UNIVERSE_SYMBOL = "x-instrument-universe"
FORECAST_REQUEST = "ForecastRequest"


def bind_to_service(app: FastAPI, symbols: Sequence[str], max_bars: int, min_bars: int) -> None:
    """``app.openapi`` from now on serves FastAPI's document with this service's values filled in (built once)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            _bind(build(), list(symbols), max_bars, min_bars)  # FastAPI's own, which it caches on the app
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _bind(document: dict, symbols: list[str], max_bars: int, min_bars: int) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                extra = parameter.get("schema", {}).pop(UNIVERSE_SYMBOL, None)
                if extra is not None:
                    parameter["schema"] = {"type": "string", "enum": [*extra, *symbols]}
    request = document.get("components", {}).get("schemas", {}).get(FORECAST_REQUEST)
    if request is not None:
        _bind_forecast_request(request, symbols, max_bars, min_bars)


def _bind_forecast_request(schema: dict, symbols: list[str], max_bars: int, min_bars: int) -> None:
    """A known instrument (no bars, no calendar) or ad-hoc bars with a calendar, within the service's limits."""
    fields = schema["properties"]
    fields["timeframe"] = {**fields["timeframe"], "type": "string", "enum": list(TIMEFRAMES)}
    fields["calendar"] = {**_without_type(fields["calendar"]),
                          "anyOf": [{"type": "string", "enum": calendar_names()}, {"type": "null"}]}
    fields["bars"] = {**_without_type(fields["bars"]), "anyOf": [
        {"type": "array", "items": _array_items(fields["bars"]), "minItems": min_bars, "maxItems": max_bars},
        {"type": "null"},
    ]}
    fields["context_length"] = {**_without_type(fields["context_length"]),
                                "anyOf": [{"type": "integer", "minimum": 1, "maximum": max_bars}, {"type": "null"}]}
    fields["quantiles"] = {**_without_type(fields["quantiles"]), "anyOf": [
        {"type": "array", "items": {"type": "number", "enum": list(MODEL_QUANTILE_LEVELS)}, "minItems": 1,
         "uniqueItems": True},
        {"type": "null"},
    ]}
    schema["anyOf"] = [
        {"title": "A known instrument", "required": ["symbol"],
         "properties": {"symbol": {"type": "string", "enum": symbols}, "bars": {"type": "null"},
                        "calendar": {"type": "null"}}},
        {"title": "Ad-hoc bars", "required": ["bars", "calendar"],
         "properties": {"bars": {"type": "array"}, "calendar": {"type": "string"}}},
    ]


def calendar_names() -> list[str]:
    """The calendars ad-hoc bars may name: ``24/7``, ``24/5`` and every exchange code."""
    return list(dict.fromkeys([CALENDAR_24_7, CALENDAR_24_5, *sorted(exchange_calendar_names())]))


def _without_type(field: dict) -> dict:
    return {key: value for key, value in field.items() if key not in ("anyOf", "type", "minItems", "maxItems", "items",
                                                                     "minimum", "maximum")}


def _array_items(field: dict) -> dict:
    arrays = [option for option in field.get("anyOf", [field]) if option.get("type") == "array"]
    return arrays[0]["items"]
