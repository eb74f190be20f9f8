"""``POST /runs/forecast``: a Dagster run's batch, in the scheduler's bulk lane, answered as a stream of frames.

The body and the answer are ``batch_wire``'s binary format. The batch is cut into chunks of at
most ``chunk_cost_gpu`` or ``chunk_cost_cpu`` series x context (by where the previous chunk ran),
and waiting on-demand requests go between two chunks. While the batch waits or works the answer
sends a heartbeat every ``HEARTBEAT_S``, so the run's client can tell a busy service from one that
stopped answering; the last frame holds the quantiles, or the failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import AsyncIterator, Generator
from dataclasses import replace
from functools import partial

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from forecasting_pipeline.forecasting.batch_wire import (
    FRAMES_MEDIA_TYPE,
    HEARTBEAT,
    MEDIA_TYPE,
    WireError,
    decode_inputs,
    decode_npz,
    encode_npz,
    frame,
    model_key,
)
from forecasting_pipeline.forecasting.device import DeviceRun
from forecasting_pipeline.forecasting.model import ModelIdentity
from forecasting_pipeline.forecasting.predict import MAX_HORIZON
from forecasting_pipeline.forecasting.runner import Chronos2Runner, Prediction
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.dependencies import Service, ready_service
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
from forecasting_pipeline.serving.api.scheduler import BulkContext, Overloaded
from forecasting_pipeline.serving.api.schemas import refusals

logger = logging.getLogger(__name__)

RUNS_PATH = "/runs/forecast"
RUNS_MODEL_PATH = "/runs/model"
HEARTBEAT_S = 2.0
# Large enough for an hourly backfill run's inputs (240 windows x 69 series x 2048 float32 values).
MAX_RUN_BODY_BYTES = 1 << 31

router = APIRouter(tags=["runs"])


class ServedModel(BaseModel):
    model: str = Field(description="The checkpoint's hub id, or its resolved local path.")
    revision: str | None = Field(description="The pinned hub revision, or null.")
    dtype: str = Field(description="The precision the model computes in.")
    model_version: str = Field(description="What the rows it makes carry as `model_version`.")


@router.get(RUNS_MODEL_PATH, response_model=ServedModel, responses=refusals(401, 503))
async def served_model(service: Service = Depends(ready_service)) -> dict:
    """The model this service runs: a run compares it with its own before it sends a batch."""
    runner = service.runner
    return {**model_key(runner.model, runner.revision, runner.dtype), "model_version": service.model_version}

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    RUNS_PATH,
    response_class=StreamingResponse,
    responses={200: {"content": {FRAMES_MEDIA_TYPE: _BINARY}, "description": "Frames: heartbeats, then the quantiles "
                     "or the failure (see the service docs)."}, **refusals(400, 401, 409, 413, 422, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {MEDIA_TYPE: _BINARY}}},
)
async def run_forecast(request: Request, service: Service = Depends(ready_service)) -> StreamingResponse:
    """A run's batch of model inputs (an `.npz`, no pickle): the quantiles the run would compute itself."""
    header, inputs = await asyncio.to_thread(_decoded, await request.body(), service.runner)
    bulk = partial(run_batch, service.runner, inputs, header["horizon"], header["context_length"], service.config,
                   service.metrics, f"forecast service pid {os.getpid()} at {service.socket_path}")
    future = service.scheduler.submit_bulk(bulk)
    return StreamingResponse(_frames(service, future), media_type=FRAMES_MEDIA_TYPE)


def _decoded(body: bytes, runner: Chronos2Runner) -> tuple[dict, list[dict]]:
    """The batch's header and inputs; 400 for a body not in the format, 409 for another model, 422 for bad numbers."""
    try:
        header, arrays = decode_npz(body)
        covariates = header.get("covariates")
        if not isinstance(covariates, list) or not all(isinstance(c, str) for c in covariates):
            raise WireError("the header's 'covariates' must be a list of names")
        inputs = decode_inputs(covariates, arrays)
    except WireError as exc:
        raise Refusal(400, "body", str(exc)) from None
    mine = model_key(runner.model, runner.revision, runner.dtype)
    wanted = {name: header.get(name) for name in mine}
    if wanted != mine:
        raise Refusal(409, "model", f"this service runs {mine}, the run asked for {wanted}")
    for name, top in (("horizon", MAX_HORIZON), ("context_length", None)):
        value = header.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (top is not None and value > top):
            raise Refusal(422, name, f"must be a whole number from 1{f' to {top}' if top else ''}, got {value!r}")
    if not inputs:
        raise Refusal(422, "body", "the batch has no series")
    return header, inputs


def run_batch(
    runner: Chronos2Runner, inputs: list[dict], horizon: int, context_length: int, config: ServiceConfig,
    metrics: ServiceMetrics, model_process: str, context: BulkContext,
) -> Generator[None, None, Prediction]:
    """The batch in chunks, one per step of the scheduler; returns the whole batch's prediction."""
    parts: list[Prediction] = []
    start, on_gpu = 0, context.lock == "held"
    while True:
        cost = config.chunk_cost_gpu if on_gpu else config.chunk_cost_cpu
        size = max(1, cost // context_length)
        done = runner.predict_here(inputs[start : start + size], horizon, context_length, lock=context.lock)
        metrics.record_call("bulk", len(inputs[start : start + size]), done)
        parts.append(done)
        start += size
        on_gpu = done.device_run.device == "cuda"
        if start >= len(inputs):
            return merged(parts, context, model_process)
        yield


def merged(parts: list[Prediction], context: BulkContext, model_process: str) -> Prediction:
    """One prediction for the chunks of a batch, as if it had been one call: where each ran, summed up."""
    runs = [p.device_run for p in parts]
    on_cpu = [r for r in runs if r.device == "cpu"]
    first_fallback = next((r for r in runs if r.fell_back), runs[0])
    reason = context.lock_note if context.lock_note and on_cpu else first_fallback.reason
    if on_cpu and len(on_cpu) < len(runs):
        reason += f" ({len(on_cpu)} of {len(runs)} chunks on the CPU)"
    device = "cpu" if on_cpu else "cuda"
    peaks = [r.peak_gpu_memory_bytes for r in runs if r.peak_gpu_memory_bytes is not None]
    record = DeviceRun(
        runs[0].requested, device, any(r.fell_back for r in runs), reason, sum(r.wall_seconds for r in runs),
        context.lock_wait_seconds if context.lock_wait_seconds is not None else first_fallback.lock_wait_seconds,
        max(peaks) if peaks else None, next((r.free_gpu_memory_bytes for r in runs if r.free_gpu_memory_bytes), None),
        next((r.other_gpu_processes for r in runs if r.other_gpu_processes is not None), None),
        model_process=model_process, lock_key=next((r.lock_key for r in runs if r.lock_key is not None), None),
    )
    timings = {key: sum(p.timings.get(key, 0.0) for p in parts) for key in parts[0].timings}
    model = replace(parts[0].model, device=device)
    return Prediction(np.concatenate([p.quantiles for p in parts]), model, timings, record)


async def _frames(service: Service, future: concurrent.futures.Future) -> AsyncIterator[bytes]:
    waiting = asyncio.wrap_future(future)
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=HEARTBEAT_S)
            if not waiting.done():
                yield HEARTBEAT
        try:
            done: Prediction = waiting.result()
        except Overloaded as exc:
            yield frame(encode_npz({"ok": False, "status": 503, "reason": str(exc)}))
            return
        except Exception as exc:  # noqa: BLE001 - the run's client gets the reason; the service goes on
            logger.exception("a run's batch failed")
            yield frame(encode_npz({"ok": False, "status": 500, "reason": f"{type(exc).__name__}: {exc}"}))
            return
        model: ModelIdentity = done.model
        header = {"ok": True, "model": {"version": model.version, "device": model.device, "dtype": model.dtype},
                  "timings": done.timings, "device_run": done.device_run.to_json()}
        yield frame(await asyncio.to_thread(encode_npz, header, {"quantiles": done.quantiles}))
    finally:
        if not future.done():
            service.scheduler.cancel_bulk(future)  # the client went away: the chunks not yet run are dropped
