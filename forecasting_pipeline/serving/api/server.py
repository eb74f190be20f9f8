"""``forecasting-pipeline serve``: one application, served by uvicorn on TCP and on the runs' Unix socket.

uvicorn serves one socket per ``Server``, so two run in one event loop, sharing the application
and its one lifespan (the model, the scheduler). Both sockets are bound here before the model
loads, so that a port in use or a socket path taken fails at once and plainly. The Unix socket
is created mode 0600 (uvicorn's own ``uds`` would make it 0666): only the user who started the
service can send it work, which is why it needs no token (``access``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.serving.api.access import LocalSocket
from forecasting_pipeline.serving.api.app import create_app
from forecasting_pipeline.serving.api.config import ServiceConfig

logger = logging.getLogger(__name__)

# Longest a stop waits for requests in flight (a run's batch on the CPU can take minutes: its
# client then loads the model itself).
GRACEFUL_STOP_S = 10


class SocketPathTaken(RuntimeError):
    """The socket path is a file, or another service listens there."""


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve`` (one handler must stop both servers)."""

    @contextmanager
    def capture_signals(self):
        yield


def serve(
    config: ServiceConfig,
    runner: Chronos2Runner,
    source: BarSource,
    instruments: Sequence[Instrument],
    socket_path: str | None,
    database_url: str | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM; 0 after a clean stop, 1 when it cannot start, 2 when starting would be unsafe."""
    unsafe = config.exposed_without_token()
    if unsafe:
        print(f"forecasting-pipeline serve: {unsafe}", file=sys.stderr)
        return 2
    try:
        tcp = _bind_tcp(config.host, config.port)
    except OSError as exc:
        print(f"forecasting-pipeline serve: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    unix = None
    if socket_path is not None:
        try:
            unix = bind_unix_socket(Path(socket_path))
        except (SocketPathTaken, OSError) as exc:
            tcp.close()
            print(f"forecasting-pipeline serve: {exc}", file=sys.stderr)
            return 1
    app = create_app(config, runner, source, instruments, socket_path, database_url)
    logger.info(
        "forecast service on http://%s:%d (docs at /docs), runs' socket %s; token %s",
        config.host, config.port, socket_path or "off", "required" if config.token else "not required",
    )
    try:
        asyncio.run(_serve_both(app, tcp, unix))
    finally:
        if socket_path is not None:
            Path(socket_path).unlink(missing_ok=True)
    return 0


async def _serve_both(app, tcp: socket.socket, unix: socket.socket | None) -> None:
    servers = [(_Server(_config(app)), tcp)]
    if unix is not None:
        servers.append((_Server(_config(LocalSocket(app))), unix))
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        logger.info("stopping on signal %d", signum)
        for server, _sock in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    async with app.router.lifespan_context(app):
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))


def _config(app) -> uvicorn.Config:
    # The lifespan is run once, around both servers, by _serve_both.
    return uvicorn.Config(app, lifespan="off", log_level="info", timeout_graceful_shutdown=GRACEFUL_STOP_S)


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path``, mode 0600; SocketPathTaken for a file or a live service there.

    A socket file left by a service that died is replaced.
    """
    if path.exists() and not path.is_socket():
        raise SocketPathTaken(f"{path} exists and is not a socket: choose another path for the runs' socket")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a service that died
        else:
            raise SocketPathTaken(f"a forecast service already listens at {path}")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment in which others may connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    return sock
