"""``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from forecasting_pipeline.serving.api.dependencies import Service, service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(found: Service = Depends(service)) -> JSONResponse:
    if found.ready.is_set():
        return JSONResponse({"status": "ready", "model_version": found.model_version, "socket": found.socket_path})
    reason = f"the model failed to load: {found.load_error}" if found.load_error else "the model is loading"
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


@router.get("/metrics")
async def metrics(found: Service = Depends(service)) -> Response:
    return Response(found.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
