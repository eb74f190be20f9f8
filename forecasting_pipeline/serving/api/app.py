"""The forecast service's FastAPI application: one factory, routers per concern, the model loaded in the lifespan.

The lifespan binds the model server's Unix socket first (so a second service on the same path
fails at once), then loads the model on the model worker while ``/healthz`` already answers;
once it is loaded, ``/readyz`` says so, the socket starts answering Dagster runs and the
micro-batcher the HTTP requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from forecasting_pipeline.forecasting.model_server import SocketModelServer
from forecasting_pipeline.forecasting.runner import Chronos2Runner, Prediction
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.serving.api import dashboard, health, predictions, showcase
from forecasting_pipeline.serving.api.batcher import ModelWorker
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.dependencies import Service
from forecasting_pipeline.serving.api.errors import BodyLimit, install_error_handlers
from forecasting_pipeline.serving.api.forecaster import Clock, OnDemandForecaster, utc_now
from forecasting_pipeline.serving.api.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

TITLE = "forecasting_pipeline service"


def create_app(
    config: ServiceConfig,
    runner: Chronos2Runner,
    source: BarSource,
    instruments: Sequence[Instrument],
    socket_path: str | None = None,
    database_url: str | None = None,
    clock: Clock = utc_now,
) -> FastAPI:
    """The application; ``socket_path`` also serves Dagster runs' batches there (the model server).

    ``database_url`` (a secret, never shown) is the ``ml_predictions`` database the read endpoints
    use, and the GPU lock's (through ``runner``).
    """
    worker = ModelWorker()
    metrics = ServiceMetrics(config.batch_wait_s, config.batch_max_series)
    forecaster = OnDemandForecaster(config, runner, source, instruments, worker, metrics, clock)
    state = Service(config, forecaster, worker, metrics, socket_path, database_url=database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if socket_path is not None:
            state.socket_server = SocketModelServer(runner, socket_path, _socket_predict(runner, worker, metrics))
        state.open_pool()
        loading = asyncio.get_running_loop().create_task(_load(state, runner))
        forecaster.batcher.start()
        try:
            yield
        finally:
            loading.cancel()
            await forecaster.batcher.stop()
            if state.socket_server is not None:
                state.socket_server.stop()
            if state.pool is not None:
                state.pool.close()
            worker.shutdown()

    app = FastAPI(title=TITLE, lifespan=lifespan, description="On-demand Chronos-2 forecasts and the model server of Dagster runs.")
    app.state.service = state
    install_error_handlers(app)
    routers = (predictions.router, showcase.router, health.router, dashboard.router)
    for router in routers:
        app.include_router(router)
    app.mount("/static", dashboard.static_files(), name="static")
    paths = {route.path for router in routers for route in router.routes} | {app.docs_url, app.openapi_url}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=frozenset(paths))
    return app


async def _load(state: Service, runner: Chronos2Runner) -> None:
    started = time.perf_counter()
    try:
        loaded = await state.worker.run(runner.load, "cpu")
    except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; the process stays up to say so
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("could not load the model: %s", state.load_error)
        return
    state.model_version = loaded.version
    logger.info("loaded %s on the CPU in %.1fs", loaded.version, time.perf_counter() - started)
    if state.socket_server is not None:
        state.socket_server.start()
    state.metrics.ready.set(1)
    state.ready.set()


def _socket_predict(runner: Chronos2Runner, worker: ModelWorker, metrics: ServiceMetrics):
    """A run's batch, queued on the model worker behind whatever HTTP batch is running."""

    def predict(inputs: list[dict], horizon: int, context_length: int) -> Prediction:
        done = worker.call(runner.predict_here, inputs, horizon, context_length)
        metrics.record_call("socket", len(inputs), done)
        return done

    return predict


class RequestMetrics:
    """ASGI middleware: counts every answer by endpoint and status and times it (unknown paths as ``other``)."""

    def __init__(self, app, metrics: ServiceMetrics, paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember)
        finally:
            endpoint = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.record_request(endpoint, status, time.perf_counter() - started)
