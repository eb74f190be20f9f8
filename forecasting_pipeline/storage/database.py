"""PostgreSQL connections: retry on connect, and a redacted description for errors.

The URL is a secret (it may hold a password): it is read through ``dg.EnvVar`` and never
appears in logs, metadata or exception messages; only host, port and database do.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict

logger = logging.getLogger(__name__)


class DatabaseUnavailableError(RuntimeError):
    """PostgreSQL could not be reached; the message names host and database, never the password."""


def describe_database(url: str) -> str:
    """Return ``host:port/dbname`` for a libpq URL or DSN, without user or password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or '?'}"


def connect(url: str, *, attempts: int = 3, backoff_s: float = 0.5, connect_timeout_s: int = 10) -> psycopg.Connection:
    """Open a connection, retrying with exponential backoff.

    Raises
    ------
    DatabaseUnavailableError
        After the last attempt; the message names host and database only.
    """
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return psycopg.connect(url, connect_timeout=connect_timeout_s)
        except psycopg.OperationalError as exc:
            last = exc
            if attempt < attempts:
                delay = backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "PostgreSQL at %s unreachable (attempt %d/%d); retrying in %.1fs",
                    describe_database(url), attempt, attempts, delay,
                )
                time.sleep(delay)
    # NOTE: psycopg's message can echo the DSN's password on some errors, so it is not chained or quoted.
    raise DatabaseUnavailableError(
        f"PostgreSQL at {describe_database(url)} is unreachable after {attempts} attempts "
        f"({type(last).__name__}). Check DATABASE_URL and that the server is running."
    ) from None
