"""``forecasting-pipeline serve``: the forecast service in one process, HTTP on a loopback port and the runs' Unix socket."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from forecasting_pipeline.forecasting.model_server import SocketPathTaken, claim_socket_path
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.serving.api.app import create_app
from forecasting_pipeline.serving.api.config import ServiceConfig

logger = logging.getLogger(__name__)


def serve(
    config: ServiceConfig,
    runner: Chronos2Runner,
    source: BarSource,
    instruments: Sequence[Instrument],
    socket_path: str | None,
    database_url: str | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM (uvicorn finishes the requests in flight, then the socket closes)."""
    if socket_path is not None:
        try:
            # Checked before the HTTP side starts, so that a second service fails at once and plainly.
            claim_socket_path(Path(socket_path))
        except SocketPathTaken as exc:
            print(f"forecasting-pipeline serve: {exc}", file=sys.stderr)
            return 1
    app = create_app(config, runner, source, instruments, socket_path, database_url)
    logger.info(
        "forecast service on http://%s:%d (docs at /docs), model server socket %s; token %s",
        config.host, config.port, socket_path or "off", "required" if config.token else "not required",
    )
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info", lifespan="on"))
    stopped_by: list[int] = []
    # uvicorn shuts down cleanly on SIGINT/SIGTERM and then re-raises the signal to the handler it
    # found: this one notes it, so that a clean stop exits 0 (not as killed, which `make` reports as an error).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, _frame: stopped_by.append(received))
    server.run()
    if stopped_by:
        logger.info("stopped on signal %d", stopped_by[0])
    # uvicorn returns after a failed start-up (a port in use, a socket path taken) without raising.
    return 0 if server.started else 1
