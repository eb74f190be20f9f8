"""``GET /healthz`` (the process answers), ``GET /readyz`` (the model is loaded) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from forecasting_pipeline.serving.api.dependencies import Service, service
from forecasting_pipeline.serving.api.schemas import refusals

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: str = Field(description="`alive`")


class Ready(BaseModel):
    status: str = Field(description="`ready`")
    model_version: str
    socket: str | None = Field(description="The runs' Unix socket (CHRONOS2_SERVER), or null when not served.")
    pid: int


class NotReady(BaseModel):
    status: str = Field(description="`not ready`")
    reason: str = Field(description="The model is loading, or why it failed to load.")


@router.get("/healthz", response_model=Alive)
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": NotReady, "description": "Not ready, and why."}})
async def readyz(found: Service = Depends(service)) -> JSONResponse:
    if found.ready.is_set():
        return JSONResponse({"status": "ready", "model_version": found.model_version, "socket": found.socket_path,
                             "pid": os.getpid()})
    reason = f"the model failed to load: {found.load_error}" if found.load_error else "the model is loading"
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


@router.get(
    "/metrics", response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
               **refusals(401)},
)
async def metrics(found: Service = Depends(service)) -> Response:
    return Response(found.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
