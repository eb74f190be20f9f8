"""``POST /predict-chronos2`` and ``POST /predict-batch-chronos2``: on-demand Chronos-2 forecasts.

Both go through the scheduler's interactive lane: before any run's next chunk, bounded in queue
and time (503 with ``Retry-After`` past either), and dropped before the model when the client
disconnects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Depends, Request

from forecasting_pipeline.forecasting.on_demand import InputProblem, SeriesRequest
from forecasting_pipeline.serving.api.dependencies import Service, ready_service
from forecasting_pipeline.serving.api.errors import ClientGone, Refusal
from forecasting_pipeline.serving.api.forecaster import ItemRefused, answer_json, since
from forecasting_pipeline.serving.api.schemas import (
    BatchAnswer,
    BatchRequest,
    ForecastAnswer,
    ForecastRequest,
    refusals,
)

T = TypeVar("T")

router = APIRouter(tags=["predictions"], responses=refusals(400, 401, 413, 422, 503))


@router.post("/predict-chronos2", response_model=ForecastAnswer)
async def predict(body: ForecastRequest, request: Request, service: Service = Depends(ready_service)) -> dict:
    """Forecast one series: a known instrument up to its newest closed bar, or the bars given."""
    started = time.perf_counter()
    forecaster = service.forecaster
    forecaster.check_cost([body], "body")
    series = await asyncio.to_thread(forecaster.series, body)
    (answer,) = await unless_gone(request, forecaster.forecast([series]))
    if isinstance(answer, InputProblem):
        raise answer
    return answer_json(answer, since(started))


@router.post("/predict-batch-chronos2", response_model=BatchAnswer)
async def predict_batch(body: BatchRequest, request: Request, service: Service = Depends(ready_service)) -> dict:
    """Forecast several series in one model call; a bad item gets its own error entry, the rest are answered."""
    started = time.perf_counter()
    limit = service.config.max_batch_items
    if len(body.requests) > limit:
        raise Refusal(422, "requests", f"{len(body.requests)} items, over this service's limit of {limit}")
    forecaster = service.forecaster
    parsed = [forecaster.parse_item(i, raw) for i, raw in enumerate(body.requests)]
    forecaster.check_cost([p for p in parsed if not isinstance(p, ItemRefused)], "requests")
    items = await asyncio.to_thread(lambda: [forecaster.item_series(i, p) for i, p in enumerate(parsed)])
    good: list[SeriesRequest] = [item for item in items if isinstance(item, SeriesRequest)]
    answers = iter(await unless_gone(request, forecaster.forecast(good)) if good else [])
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


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; when the client disconnects first, ``work`` is cancelled (so never computed if queued)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - nobody is left to tell
        pass
    raise ClientGone()


async def _disconnected(request: Request) -> None:
    # The body has been read: the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _item_error(index: int, status: int, problems: list[tuple[str, str]]) -> dict:
    return {"index": index, "status": status, "errors": [{"field": f, "reason": r} for f, r in problems]}

