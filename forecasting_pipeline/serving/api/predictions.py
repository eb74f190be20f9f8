"""``POST /predict-chronos2`` and ``POST /predict-batch-chronos2``: on-demand Chronos-2 forecasts."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends

from forecasting_pipeline.forecasting.on_demand import InputProblem, SeriesRequest
from forecasting_pipeline.serving.api.dependencies import Service, ready_service, require_token
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.forecaster import ItemRefused, answer_json, since
from forecasting_pipeline.serving.api.schemas import (
    BatchAnswer,
    BatchRequest,
    ErrorAnswer,
    ForecastAnswer,
    ForecastRequest,
)

REFUSALS = {status: {"model": ErrorAnswer} for status in (400, 401, 413, 422, 503)}

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_token)], responses=REFUSALS)


@router.post("/predict-chronos2", response_model=ForecastAnswer)
async def predict(body: ForecastRequest, service: Service = Depends(ready_service)) -> dict:
    """Forecast one series: a known instrument up to its newest closed bar, or the bars given."""
    started = time.perf_counter()
    forecaster = service.forecaster
    series = await asyncio.to_thread(forecaster.series, body)
    (answer,) = await forecaster.forecast([series])
    if isinstance(answer, InputProblem):
        raise answer
    return answer_json(answer, since(started))


@router.post("/predict-batch-chronos2", response_model=BatchAnswer)
async def predict_batch(body: BatchRequest, service: Service = Depends(ready_service)) -> dict:
    """Forecast several series in one model call; a bad item gets its own error entry, the rest are answered."""
    started = time.perf_counter()
    limit = service.config.max_batch_items
    if len(body.requests) > limit:
        raise Refusal(422, "requests", f"{len(body.requests)} items, over this service's limit of {limit}")
    forecaster = service.forecaster
    items = await asyncio.to_thread(lambda: [forecaster.batch_item(i, raw) for i, raw in enumerate(body.requests)])
    good: list[SeriesRequest] = [item for item in items if isinstance(item, SeriesRequest)]
    answers = iter(await forecaster.forecast(good) if good else [])
    results = []
    for index, item in enumerate(items):
        if isinstance(item, ItemRefused):
            results.append(_item_error(index, item.status, item.problems))
            continue
        answer = next(answers)
        if isinstance(answer, InputProblem):
            results.append(_item_error(index, 422, [(f"requests[{index}].{answer.field}", answer.reason)]))
        else:
            results.append(answer_json(answer, since(started)))
    return {"results": results}


def _item_error(index: int, status: int, problems: list[tuple[str, str]]) -> dict:
    return {"index": index, "status": status, "errors": [{"field": f, "reason": r} for f, r in problems]}
