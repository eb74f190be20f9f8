"""The forecast service's FastAPI application: one factory, routers per concern, the model loaded in the lifespan.

The same application answers on TCP (on-demand forecasts, the dashboard; the token applies) and
on the runs' Unix socket (``server.py``; ``access.LocalSocket``). The lifespan starts the
scheduler's model worker and loads the model while ``/healthz`` already answers; once it is
loaded, ``/readyz`` says so and the predict and runs endpoints take work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from forecasting_pipeline.forecasting.device import GpuLease
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.serving.api import dashboard, health, predictions, runs, showcase
from forecasting_pipeline.serving.api.access import TokenGuard
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.dependencies import Service
from forecasting_pipeline.serving.api.errors import BodyLimit, install_error_handlers
from forecasting_pipeline.serving.api.forecaster import Clock, OnDemandForecaster, utc_now
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
from forecasting_pipeline.serving.api.openapi import bind_to_service
from forecasting_pipeline.serving.api.scheduler import ModelScheduler

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
    """The application; ``socket_path`` is the runs' Unix socket it is also served on (for ``/readyz`` and the records).

    ``database_url`` (a secret, never shown) is the ``ml_predictions`` database the read endpoints
    use, and the GPU lock's (through ``runner``).
    """
    metrics = ServiceMetrics(config)
    scheduler = ModelScheduler(
        # `forecaster` is bound below, before the scheduler starts.
        lambda series, lock: forecaster.answer(series, lock), config.batch_wait_s, config.batch_max_series,
        config.max_queued, lease=lambda: _lease(runner), metrics=metrics,
    )
    forecaster = OnDemandForecaster(config, runner, source, instruments, scheduler, metrics, clock)
    metrics.watch_queues(scheduler.depth)
    state = Service(config, runner, forecaster, scheduler, metrics, socket_path, database_url=database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.open_pool()
        scheduler.start()
        loading = asyncio.get_running_loop().create_task(_load(state, runner))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.to_thread(scheduler.stop)
            if state.pool is not None:
                state.pool.close()

    app = FastAPI(title=TITLE, lifespan=lifespan,
                  description="On-demand Chronos-2 forecasts, the dashboard's reads, and the forecasts of Dagster runs.")
    app.state.service = state
    install_error_handlers(app)
    routers = (predictions.router, runs.router, showcase.router, health.router, dashboard.router)
    for router in routers:
        app.include_router(router)
    app.mount("/static", dashboard.static_files(), name="static")
    bind_to_service(app, list(forecaster.instruments), config.max_bars, forecaster.rules.min_history_bars)
    paths = {route.path for router in routers for route in router.routes} | {app.docs_url, app.openapi_url}
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, per_path={runs.RUNS_PATH: runs.MAX_RUN_BODY_BYTES})
    # Outside the body limit, so that a request without the token is refused before any of its body is read.
    app.add_middleware(TokenGuard, token=config.token, public_dashboard=config.public_dashboard)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=frozenset(paths))
    return app


def _lease(runner: Chronos2Runner) -> GpuLease:
    return GpuLease(runner.gpu_settings(), runner.lock_database_url, release_cuda=lambda: runner.release("cuda"))


async def _load(state: Service, runner: Chronos2Runner) -> None:
    started = time.perf_counter()
    try:
        loaded = await asyncio.to_thread(runner.load, "cpu")
    except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; the process stays up to say so
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("could not load the model: %s", state.load_error)
        return
    state.model_version = loaded.version
    logger.info("loaded %s on the CPU in %.1fs", loaded.version, time.perf_counter() - started)
    state.metrics.ready.set(1)
    state.ready.set()


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
