"""What the forecast service is configured with; ``settings.py`` builds it from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
# Beside Kronos's service on 8200.
DEFAULT_PORT = 8201


@dataclass(frozen=True)
class ServiceConfig:
    """Address, micro-batching and limits of the service.

    Attributes
    ----------
    batch_wait_s
        Longest a request waits for others to share its model call, counted from its arrival.
    batch_max_series
        Most series in one model call; a batch request larger than this still runs as one call.
    max_body_bytes, max_bars, max_batch_items
        Limits that protect the process: request body size, bars per series (also the largest
        ``context_length``), and items per batch request.
    token
        The bearer token the predict endpoints require, or None for none. A secret: never shown.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    batch_wait_s: float = 0.02
    batch_max_series: int = 32
    max_body_bytes: int = 8 * 1024 * 1024
    max_bars: int = 8192
    max_batch_items: int = 64
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.batch_wait_s < 0 or self.batch_max_series < 1:
            raise ValueError(f"batch wait must be >= 0 and batch size >= 1, got {self.batch_wait_s}, {self.batch_max_series}")
        if min(self.max_body_bytes, self.max_bars, self.max_batch_items) < 1:
            raise ValueError("max_body_bytes, max_bars and max_batch_items must be positive")
