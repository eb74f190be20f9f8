"""What the routes depend on: the service's parts, the model being ready, and the bearer token."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from fastapi import Request
from psycopg_pool import ConnectionPool, PoolTimeout

from forecasting_pipeline.forecasting.model_server import SocketModelServer
from forecasting_pipeline.serving.api.batcher import ModelWorker
from forecasting_pipeline.serving.api.config import ServiceConfig
from forecasting_pipeline.serving.api.errors import Refusal
from forecasting_pipeline.serving.api.forecaster import OnDemandForecaster
from forecasting_pipeline.serving.api.metrics import ServiceMetrics
from forecasting_pipeline.serving.gateway import ReadPathMissingError
from forecasting_pipeline.storage.database import describe_database, utc_conninfo


@dataclass
class Service:
    """Everything one service process holds; ``app.state.service``."""

    config: ServiceConfig
    forecaster: OnDemandForecaster
    worker: ModelWorker
    metrics: ServiceMetrics
    socket_path: str | None = None
    socket_server: SocketModelServer | None = None
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


def require_token(request: Request) -> None:
    """With a token configured, ``Authorization: Bearer <token>`` is required; compared in constant time.

    Neither the expected nor the presented token appears in any answer or log line.
    """
    expected = service(request).config.token
    if expected is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Refusal(401, "Authorization", "a valid 'Bearer' token is required", headers={"WWW-Authenticate": "Bearer"})
