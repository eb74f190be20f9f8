"""PostgreSQL connections: UTC sessions, retry on connect, shared pools, and a redacted description for errors.

The URL is a secret (it may hold a password): it is read through ``dg.EnvVar`` and never
appears in logs, metadata or exception messages; only host, port and database do.

Every connection the project opens asks for ``TimeZone=UTC`` at start-up (``utc_conninfo``).
Python reads a timestamp without an offset as UTC (``times.as_utc``); PostgreSQL reads one (a
``::timestamptz`` cast of a Kronos step's text, a ``timestamp`` bar column compared with an
instant) in the session's TimeZone, which is the server's or the database's default unless the
session sets it. With UTC sessions both sides read a naive timestamp the same way, whatever the
server is set to.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

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


#: The session setting every connection of the project starts with.
UTC_SESSION_OPTION = "-c TimeZone=UTC"


def utc_conninfo(url: str) -> str:
    """``url`` as a conninfo whose sessions start in UTC; any ``options`` the URL holds are kept (UTC comes last, so it wins)."""
    given = conninfo_to_dict(url).get("options") or ""
    return make_conninfo(url, options=f"{given} {UTC_SESSION_OPTION}".strip())


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
            return psycopg.connect(utc_conninfo(url), connect_timeout=connect_timeout_s)
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


# One pool per database URL and process: a bar source is built per run step and per service, and
# each of its reads borrows a connection instead of opening one. Keyed by process too, because a
# connection must never be shared across a fork.
_POOLS: dict[tuple[int, str], ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()
POOL_MAX_SIZE = 4
POOL_TIMEOUT_S = 10.0


def shared_pool(url: str) -> ConnectionPool:
    """This process's pool of UTC, autocommit connections to ``url`` (opened on first use, closed at exit).

    A borrowed connection that fails is discarded by the pool; one that cannot be had within
    ``POOL_TIMEOUT_S`` raises ``psycopg_pool.PoolTimeout``.
    """
    key = (os.getpid(), url)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ConnectionPool(
                utc_conninfo(url), min_size=1, max_size=POOL_MAX_SIZE, timeout=POOL_TIMEOUT_S, open=False,
                kwargs={"autocommit": True}, name=f"shared:{describe_database(url)}",
            )
            pool.open(wait=False)
            _POOLS[key] = pool
    return pool


@atexit.register
def close_pools() -> None:
    """Close this process's shared pools (at exit, or when a test wants them gone)."""
    with _POOLS_LOCK:
        mine = [key for key in _POOLS if key[0] == os.getpid()]
        pools = [_POOLS.pop(key) for key in mine]
    for pool in pools:
        pool.close()
