"""The dashboard at ``/``, and the reads only it needs: the models with rows, past forecasts, rolling scores, weights.

The page is static and reads only the service's read endpoints (no database credentials reach
it). The endpoints here live under ``/showcase/`` beside the gateway's, and answer 200 with an
``empty_reason`` when there is nothing to show for a valid question (an instrument with no rows,
no bars, no scores yet), so the page can say why in the panel concerned. A parameter the endpoint
does not take, or given twice, is answered 400; a malformed one, or one that names nothing known
(an instrument outside the universe, answered with the known values), 422; a model without rows is a valid question whose answer is empty, with the models
that have rows in its ``empty_reason``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from forecasting_pipeline.market.cadences import cadence_named
from forecasting_pipeline.market.instruments import SYMBOL_PATTERN, Instrument
from forecasting_pipeline.scoring.rolling import ROLLING_WINDOW
from forecasting_pipeline.serving.api.dependencies import Service, service
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.openapi import UNIVERSE_SYMBOL
from forecasting_pipeline.serving.api.schemas import refusals
from forecasting_pipeline.serving.api.showcase import MODEL_PATTERN, query
from forecasting_pipeline.serving.gateway import DEFAULT_MODEL, known_models
from forecasting_pipeline.serving.model_catalog import KINDS, describe_model, model_catalog
from forecasting_pipeline.serving.track_record import MAX_ORIGINS, MAX_POINTS, past_forecasts, rolling_scores
from forecasting_pipeline.serving.weights_history import MAX_FORECASTS, weights_history

STATIC = Path(__file__).resolve().parents[1] / "static"
DEFAULT_ORIGINS = 5
DEFAULT_WEIGHTS = 250

router = APIRouter(tags=["dashboard"])
# The refusals the service documents everywhere: 400 a parameter unknown or repeated, 422 one malformed or
# naming nothing known, 401 without the token, 503 without a database.
_REFUSALS = refusals(400, 401, 422, 503)

Symbol = Annotated[str, Query(pattern=SYMBOL_PATTERN.pattern, max_length=32,
                              description="A symbol of the instrument universe (`/showcase/instruments`).",
                              json_schema_extra={UNIVERSE_SYMBOL: []})]
Timeframe = Annotated[Literal["1h", "1d"], Query(description="The cadence: `1h` or `1d`.")]
Kind = Literal[KINDS]  # type: ignore[valid-type]


class ModelSeries(BaseModel):
    timeframe: str
    symbol: str
    newest_origin: datetime = Field(description="`as_of` of the newest row, or its `created_at` where it has none (Kronos).")


class CatalogEntry(BaseModel):
    model_name: str = Field(description="As stored in `ml_predictions.model_name`.")
    label: str
    kind: Kind = Field(description="`incumbent` (kronos-base), `zero-shot` (chronos-2), `ensemble`, `baseline`, "
                                   "or `challenger`: any other model with rows, such as a fine-tuned Chronos-2.")
    series: list[ModelSeries] = Field(description="Each timeframe and symbol the model has rows for.")


class View(BaseModel):
    model_name: str
    timeframe: str
    symbol: str


class ModelsAnswer(BaseModel):
    """Every model with rows in `ml_predictions`, and the view to open on."""

    models: list[CatalogEntry]
    default_model: str = Field(description="The gateway's model when a caller names none.")
    first_view: View | None = Field(description="A model, timeframe and instrument of the universe with rows; null when none has.")
    empty_reason: str | None = Field(description="Why there is no first view, in one line; null when there is one.")


class ForecastStep(BaseModel):
    ts: datetime
    p10: float | None
    p50: float | None
    p90: float | None
    close: float | None = Field(description="The realised close at `ts`; null until that bar has closed (or if it is missing).")


class PastForecastOut(BaseModel):
    as_of: datetime | None = Field(description="Close of the last bar the forecast read; null for Kronos rows.")
    created_at: datetime
    model_version: str | None
    steps: list[ForecastStep]
    realised_steps: int = Field(description="Steps whose close has come.")
    inside_band: int | None = Field(description="Realised closes within p10-p90; null for a model without a band.")


class Close(BaseModel):
    ts: datetime
    close: float | None


class PastForecastsAnswer(BaseModel):
    """A model's last forecasts of one instrument, oldest first, over the closes that realised them."""

    symbol: str
    timeframe: str
    model_name: str
    label: str
    kind: Kind
    forecasts: list[PastForecastOut]
    bars: list[Close] = Field(description="Closes from one horizon before the first origin to the newest step or bar.")
    bars_note: str | None = Field(description="Why `bars` is empty, when it is.")
    unreadable_rows: list[str] = Field(description="Rows left out because the database cannot read a value in them, and why.")
    empty_reason: str | None = Field(description="Why `forecasts` is empty, when it is.")


class RollingPoint(BaseModel):
    as_of: datetime
    n_obs: int | None = Field(description="Closes behind the coverage; null for a model without a band.")
    coverage_p10_p90: float | None
    scaled_mae: float | None = Field(description="MAE of p50 in units of a typical one-bar move.")
    relative_mae: float | None = Field(description="MAE of p50 / that of the random walk on the same forecasts.")


class RollingModel(BaseModel):
    model_name: str
    label: str
    kind: Kind
    points: list[RollingPoint]


class RollingScoresAnswer(BaseModel):
    """Each model's scores of one instrument over time, each point pooled over `window` forecast dates."""

    symbol: str
    timeframe: str
    window: int
    models: list[RollingModel]
    empty_reason: str | None


class WeightsPoint(BaseModel):
    as_of: datetime
    model_version: str
    location: dict[str, float | None] = Field(description="Member -> its share of the combined p50.")
    band: dict[str, float | None] = Field(description="Member -> its share of the band; null for a point forecast.")
    missing: dict[str, str] = Field(description="Member left out of this forecast -> why.")
    warm_up: bool = Field(description="True while too few forecasts are scored: the weights are then equal.")
    scored_forecasts: int | None
    own_share: float | None = Field(description="Weight of the instrument's own losses against those pooled over instruments.")


class WeightsAnswer(BaseModel):
    """The ensemble's weights of one instrument at each of its last forecasts, oldest first."""

    symbol: str
    timeframe: str
    members: list[str]
    points: list[WeightsPoint]
    empty_reason: str | None


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


def static_files() -> StaticFiles:
    """The page's script, style and the charting library (served from the package: no CDN)."""
    return StaticFiles(directory=STATIC)


@router.get("/showcase/models", responses=refusals(401, 503))
def models(found: Service = Depends(service)) -> ModelsAnswer:
    """Every model with rows in `ml_predictions` (challengers included), labelled, and the view to open on."""
    universe = list(found.forecaster.instruments)
    with found.database() as conn:
        catalog = model_catalog(conn, universe, DEFAULT_MODEL)
    return ModelsAnswer(
        models=[CatalogEntry(model_name=m.model_name, label=m.label, kind=m.kind,
                             series=[ModelSeries(timeframe=s.timeframe, symbol=s.symbol, newest_origin=s.newest_origin)
                                     for s in m.series]) for m in catalog.models],
        default_model=DEFAULT_MODEL,
        first_view=View(**vars(catalog.first_view)) if catalog.first_view else None,
        empty_reason=catalog.empty_reason,
    )


@router.get("/showcase/past-forecasts", responses=_REFUSALS)
def past(
    request: Request, symbol: Symbol, timeframe: Timeframe,
    model: Annotated[str, Query(pattern=MODEL_PATTERN.pattern, description="A model with rows (`/showcase/models`).")],
    origins: Annotated[int, Query(ge=1, le=MAX_ORIGINS, description="How many of the newest forecasts.")] = DEFAULT_ORIGINS,
    found: Service = Depends(service),
) -> PastForecastsAnswer:
    """The model's last `origins` forecasts of one instrument against what happened: each step with its realised close."""
    query(request, ("symbol", "timeframe", "model", "origins"))
    instrument, cadence = _instrument(found, symbol), cadence_named(timeframe)
    with found.database() as conn:
        answer = past_forecasts(conn, found.forecaster.source, instrument, cadence, model, origins, found.forecaster.clock())
        if not answer.forecasts and model not in (stored := known_models(conn)):
            answer.empty_reason = f"no {model} forecasts are stored at all; models with rows: {', '.join(stored) or '(none)'}"
    label, kind = describe_model(model)
    return PastForecastsAnswer(symbol=symbol, timeframe=timeframe, model_name=model, label=label, kind=kind,
                               forecasts=[vars(f) for f in answer.forecasts], bars=answer.bars,
                               bars_note=answer.bars_note, unreadable_rows=answer.unreadable_rows,
                               empty_reason=answer.empty_reason)


@router.get("/showcase/rolling-scores", responses=_REFUSALS)
def rolling(
    request: Request, symbol: Symbol, timeframe: Timeframe,
    window: Annotated[int, Query(ge=1, le=250, description="Forecast dates pooled into each point.")] = ROLLING_WINDOW,
    found: Service = Depends(service),
) -> RollingScoresAnswer:
    """Each model's rolling p10-p90 coverage and scaled error for one instrument, from the stored per-forecast losses."""
    query(request, ("symbol", "timeframe", "window"))
    _instrument(found, symbol)
    with found.database() as conn:
        scored = rolling_scores(conn, timeframe, symbol, window, max_points=MAX_POINTS)
    reason = None if scored else (f"no scored {timeframe} forecasts of {symbol} yet: a forecast is scored once its "
                                  f"whole horizon has closed (forecast_scores_{timeframe})")
    return RollingScoresAnswer(symbol=symbol, timeframe=timeframe, window=window, models=scored, empty_reason=reason)


@router.get("/showcase/ensemble-weights", responses=_REFUSALS)
def ensemble_weights(
    request: Request, symbol: Symbol, timeframe: Timeframe,
    last: Annotated[int, Query(ge=1, le=MAX_FORECASTS, description="How many of the newest ensemble forecasts.")] = DEFAULT_WEIGHTS,
    found: Service = Depends(service),
) -> WeightsAnswer:
    """The ensemble's member weights (location and band) at each of its last forecasts of one instrument."""
    query(request, ("symbol", "timeframe", "last"))
    _instrument(found, symbol)
    with found.database() as conn:
        members, points = weights_history(conn, timeframe, symbol, last)
    reason = None if points else (f"no ensemble {timeframe} forecasts of {symbol} are stored: the ensemble writes "
                                  "its weights with each forecast it makes")
    return WeightsAnswer(symbol=symbol, timeframe=timeframe, members=members, points=points, empty_reason=reason)


def _instrument(found: Service, symbol: str) -> Instrument:
    universe = found.forecaster.instruments
    if symbol not in universe:
        raise Refusal(422, "symbol", f"unknown symbol {symbol!r}; known symbols: {', '.join(universe)}")
    return universe[symbol]
