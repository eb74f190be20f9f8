"""What the routes depend on: the service's parts and the model being ready (the token is ``access``'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from fastapi import Request
from psycopg_pool import ConnectionPool, PoolTimeout

from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.forecaster import OnDemandForecaster
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
from forecasting_pipeline.serving.api.scheduler import ModelScheduler
from forecasting_pipeline.serving.gateway import ReadPathMissingError
from forecasting_pipeline.storage.database import describe_database, utc_conninfo


@dataclass
class Service:
    """Everything one service process holds; ``app.state.service``."""

    config: ServiceConfig
    runner: Chronos2Runner
    forecaster: OnDemandForecaster
    scheduler: ModelScheduler
    metrics: ServiceMetrics
    socket_path: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_error: str | None = None
    model_version: str | None = None
    database_url: str | None = field(default=None, repr=False)
    pool: ConnectionPool | None = None

    def open_pool(self) -> None:
        """A few connections for the read endpoints, opened in the background (the service starts without waiting)."""
        if self.database_url is not None:
            self.pool = ConnectionPool(utc_conninfo(self.database_url), min_size=1, max_size=4, timeout=10, open=False,
                                       kwargs={"autocommit": True}, name="reads")
            self.pool.open(wait=False)

    @contextmanager
    def database(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one read; 503 (naming only host and database) when there is none."""
        if self.pool is None:
            raise Refusal(503, None, "this service has no database (DATABASE_URL is unset)")
        where = describe_database(self.database_url)
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise Refusal(503, None, f"the database at {where} is unavailable") from None
        except psycopg.OperationalError:
            raise Refusal(503, None, f"the database at {where} is unavailable") from None
        except ReadPathMissingError as exc:
            raise Refusal(503, None, str(exc)) from None


def service(request: Request) -> Service:
    return request.app.state.service


def ready_service(request: Request) -> Service:
    """The service, once its model is loaded; 503 before."""
    found = service(request)
    if not found.ready.is_set():
        reason = f"the model failed to load: {found.load_error}" if found.load_error else "the model is still loading"
        raise Refusal(503, None, reason, headers={"Retry-After": "5"})
    return found
