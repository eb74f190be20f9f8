"""What the forecast service is configured with; ``settings.py`` builds it from the environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
# Beside Kronos's service on 8200.
DEFAULT_PORT = 8201


@dataclass(frozen=True)
class ServiceConfig:
    """Address, scheduling and limits of the service.

    Attributes
    ----------
    batch_wait_s
        Longest an on-demand request waits for others to share its model call while the model is idle.
    batch_max_series
        Most series in one on-demand model call; a batch request larger than this still runs as one call.
    max_queued
        Most on-demand series waiting for the model; past it a request is answered 503 at once.
    deadline_s
        Longest an on-demand request waits for the model to start on it; past it, 503.
    max_cost
        Most series x context x horizon in one request (batch items summed); more is refused with 422.
    chunk_cost_gpu, chunk_cost_cpu
        Most series x context in one chunk of a run's batch, on the GPU and on the CPU: what an
        on-demand request may wait behind.
    max_body_bytes, max_bars, max_batch_items
        Limits that protect the process: request body size, bars per series (also the largest
        ``context_length``), and items per batch request.
    token
        The bearer token every endpoint but ``/healthz`` and ``/readyz`` requires over TCP, or None
        for none. A secret: never shown.
    public_dashboard
        With a token, leave the dashboard (``/``, ``/static``) and the ``/showcase`` reads open.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    batch_wait_s: float = 0.02
    batch_max_series: int = 32
    max_queued: int = 128
    deadline_s: float = 5.0
    max_cost: int = 4_194_304
    chunk_cost_gpu: int = 131_072
    chunk_cost_cpu: int = 1_024
    max_body_bytes: int = 8 * 1024 * 1024
    max_bars: int = 8192
    max_batch_items: int = 64
    token: str | None = field(default=None, repr=False)
    public_dashboard: bool = False

    def __post_init__(self) -> None:
        if self.batch_wait_s < 0 or self.batch_max_series < 1:
            raise ValueError(f"batch wait must be >= 0 and batch size >= 1, got {self.batch_wait_s}, {self.batch_max_series}")
        if min(self.max_body_bytes, self.max_bars, self.max_batch_items, self.max_queued, self.max_cost,
               self.chunk_cost_gpu, self.chunk_cost_cpu) < 1 or self.deadline_s <= 0:
            raise ValueError("the service's limits, queue bound, deadline, cost cap and chunk costs must be positive")

    def exposed_without_token(self) -> str | None:
        """Why starting would be unsafe (a non-loopback address and no token), or None."""
        if self.token is not None or is_loopback(self.host):
            return None
        return (f"refusing to listen on {self.host} without PREDICT_API_TOKEN: every forecast and read endpoint would be "
                f"open to anyone who can reach this address. Set PREDICT_API_TOKEN, or listen on 127.0.0.1 (SERVE_HOST).")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere
