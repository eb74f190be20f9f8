"""The read endpoints: ``GET /showcase/ml-prediction`` (the gateway's), and what the dashboard reads besides.

Everything here only reads: latest forecasts through ``latest_ml_predictions``, an instrument's
last bars from the configured source, and the stored scores. A parameter the endpoint does not take,
or given twice, gets a 400; a missing or malformed one, or one that names nothing known, a 422 with
the reason (listing the known values). A known instrument (of the universe, or with rows of the
model) that has no row to answer yet gets a 404.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from forecasting_pipeline.market.cadences import cadence_named
from forecasting_pipeline.market.instruments import SYMBOL_PATTERN
from forecasting_pipeline.serving.api.dependencies import Service, service
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.openapi import UNIVERSE_SYMBOL
from forecasting_pipeline.serving.api.schemas import refusals
from forecasting_pipeline.serving.gateway import DEFAULT_MODEL, known_models
from forecasting_pipeline.serving.showcase import instrument_listing, latest_rows, model_scores, recent_bars
from forecasting_pipeline.storage.ml_predictions import TIMEFRAMES

MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_BARS = 1000
DEFAULT_BARS = 120

router = APIRouter(tags=["showcase"], responses=refusals(400, 401, 422, 503))


def _parameters(*specs: tuple[str, bool, dict, str]) -> dict:
    """The query parameters as OpenAPI declares them (parsed by ``query`` and checked here, in this API's error shape)."""
    return {"parameters": [{"name": name, "in": "query", "required": required, "schema": schema, "description": text}
                           for name, required, schema, text in specs]}


_TIMEFRAME = {"type": "string", "enum": list(TIMEFRAMES)}
# The service's universe fills these in (openapi.py); the pattern is what the handlers check first.
_SYMBOL = {"type": "string", "pattern": SYMBOL_PATTERN.pattern, UNIVERSE_SYMBOL: []}
# An optional parameter given empty counts as absent.
_OPTIONAL_TIMEFRAME = {"type": "string", "enum": ["", *TIMEFRAMES]}
_OPTIONAL_SYMBOL = {"type": "string", "pattern": f"^$|{SYMBOL_PATTERN.pattern}", UNIVERSE_SYMBOL: [""]}


class LatestRow(BaseModel):
    """One row of ``latest_ml_predictions``."""

    symbol: str
    timeframe: str
    model_name: str
    model_version: str | None
    as_of: str | None
    created_at: str
    predictions: object


@router.get("/showcase/ml-prediction", responses={200: {"model": list[LatestRow]}, **refusals(404)}, openapi_extra=_parameters(
    ("symbol", False, _OPTIONAL_SYMBOL, "One instrument of the universe; all when absent or empty. Rows another "
     "writer stored for a symbol outside the universe are answered too."),
    ("timeframe", False, _OPTIONAL_TIMEFRAME, "One timeframe; both when absent or empty."),
    ("model", False, {"type": "string", "pattern": f"^$|{MODEL_PATTERN.pattern}"},
     "A model with stored forecasts; `kronos-base` when absent or empty."),
))
def ml_prediction(request: Request, found: Service = Depends(service)) -> JSONResponse:
    """The latest forecast per symbol and timeframe of one model (default `kronos-base`), as the gateway's rows.

    Query: `symbol`, `timeframe` (`1h`, `1d`) and `model`, each optional; an empty value counts as absent.
    """
    params = query(request, ("symbol", "timeframe", "model"))
    symbol, timeframe, model = params["symbol"], params["timeframe"], params["model"]
    _check_pattern("symbol", symbol, SYMBOL_PATTERN)
    _check_pattern("model", model, MODEL_PATTERN)
    if timeframe is not None and timeframe not in TIMEFRAMES:
        raise Refusal(422, "timeframe", f"unknown timeframe {timeframe!r}; known timeframes: {', '.join(TIMEFRAMES)}")
    with found.database() as conn:
        if model is not None:
            models = known_models(conn)
            if model not in models:
                raise Refusal(422, "model", f"unknown model {model!r}; known models: {_listing(models)}")
        rows = latest_rows(conn, model or DEFAULT_MODEL, timeframe, symbol)
        if not rows and symbol is not None:
            _no_rows(found, conn, model or DEFAULT_MODEL, timeframe, symbol)
    return JSONResponse(rows)


def _no_rows(found: Service, conn, model: str, timeframe: str | None, symbol: str) -> None:
    """404 for a known instrument without a row (yet); 422 listing the known symbols for any other."""
    at = f" at {timeframe!r}" if timeframe else ""
    if symbol in found.forecaster.instruments or latest_rows(conn, model, None, symbol):
        raise Refusal(404, "symbol", f"no {model!r} rows for {symbol!r}{at} yet: a known instrument whose "
                      "forecasts have not been written (or whose latest run left it out)")
    have = sorted({r["symbol"] for r in latest_rows(conn, model, timeframe, None)})
    raise Refusal(422, "symbol", f"unknown symbol {symbol!r} for model {model!r}{at}; known symbols: {_listing(have)}")


@router.get("/showcase/instruments")
def instruments(found: Service = Depends(service)) -> dict:
    """The instrument universe, the timeframes, and the models that have stored forecasts."""
    with found.database() as conn:
        models = known_models(conn)
    return {"instruments": instrument_listing(found.forecaster.instruments.values()), "timeframes": list(TIMEFRAMES),
            "models": models, "default_model": DEFAULT_MODEL}


@router.get("/showcase/bars", openapi_extra=_parameters(
    ("symbol", True, _SYMBOL, "An instrument of the universe."),
    ("timeframe", True, _TIMEFRAME, "The bars' timeframe."),
    ("limit", False, {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_BARS}, {"type": "string", "enum": [""]}],
                      "default": DEFAULT_BARS}, "How many bars; the default when absent or empty."),
))
def bars(request: Request, found: Service = Depends(service)) -> dict:
    """The last bars of an instrument up to its newest closed bar, from the configured market-data source."""
    params = query(request, ("symbol", "timeframe", "limit"))
    instrument, cadence = _instrument(found, params["symbol"]), _cadence(params["timeframe"])
    limit = _limit(params["limit"])
    try:
        found_bars = recent_bars(found.forecaster.source, instrument, cadence, limit, found.forecaster.clock())
    except ValueError as exc:
        raise Refusal(503, "symbol", f"the market-data source cannot read {instrument.symbol}: {exc}") from None
    return {"symbol": instrument.symbol, "timeframe": cadence.name, "calendar": instrument.calendar, "bars": found_bars}


@router.get("/showcase/scores", openapi_extra=_parameters(
    ("symbol", True, _SYMBOL, "An instrument of the universe."),
    ("timeframe", True, _TIMEFRAME, "The forecasts' timeframe."),
))
def scores(request: Request, found: Service = Depends(service)) -> dict:
    """Each model's latest scores for one instrument (``forecast_scores``), pooled over the horizon's steps."""
    params = query(request, ("symbol", "timeframe"))
    instrument, cadence = _instrument(found, params["symbol"]), _cadence(params["timeframe"])
    with found.database() as conn:
        return {"symbol": instrument.symbol, "timeframe": cadence.name,
                "models": model_scores(conn, cadence.name, instrument.symbol)}


def query(request: Request, allowed: tuple[str, ...]) -> Mapping[str, str | None]:
    """The allowed parameters (empty means absent); 400 for an unknown or repeated one."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise Refusal(400, unknown[0], f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(allowed)}")
    out: dict[str, str | None] = {}
    for name in allowed:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise Refusal(400, name, f"{name} is given {len(values)} times; give it once")
        out[name] = values[0] or None if values else None
    return out


def _check_pattern(name: str, value: str | None, pattern: re.Pattern) -> None:
    if value is not None and not pattern.match(value):
        raise Refusal(422, name, f"malformed {name} {value[:80]!r}: expected {pattern.pattern}")


def _instrument(found: Service, symbol: str | None):
    universe = found.forecaster.instruments
    if symbol is None:
        raise Refusal(422, "symbol", "symbol is required")
    _check_pattern("symbol", symbol, SYMBOL_PATTERN)
    if symbol not in universe:
        raise Refusal(422, "symbol", f"unknown symbol {symbol!r}; known symbols: {', '.join(universe)}")
    return universe[symbol]


def _cadence(timeframe: str | None):
    try:
        return cadence_named(timeframe or "")
    except ValueError:
        raise Refusal(422, "timeframe", f"unknown timeframe {timeframe!r}; known timeframes: {', '.join(TIMEFRAMES)}") from None


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_BARS
    if not value.isdigit() or not 1 <= int(value) <= MAX_BARS:
        raise Refusal(422, "limit", f"limit must be a whole number from 1 to {MAX_BARS}, got {value[:20]!r}")
    return int(value)


def _listing(names) -> str:
    return ", ".join(names) if names else "(none: ml_predictions is empty)"

