"""The embedded PostgreSQL that `make run`, `make dev` and `make test` use when DATABASE_URL is unset.

It is a real server (pgserver's bundled PostgreSQL 16) with its data in a project-local,
git-ignored folder, listening on a Unix socket only. Dagster's own storage uses the same server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from forecasting_pipeline.storage.database import utc_conninfo

logger = logging.getLogger(__name__)

DEFAULT_PGDATA = ".pgdata"
EMBEDDED_DATABASE = "forecasting"


def dagster_storage_url(database_url: str) -> str:
    """Return the SQLAlchemy URL for dagster-postgres (it needs the psycopg2 driver named explicitly)."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg2"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2"))


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def ensure_database(server_url: str, dbname: str) -> str:
    """Create ``dbname`` on the server if it is missing and return a URL pointing at it."""
    with psycopg.connect(utc_conninfo(server_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return _with_database(server_url, dbname)


@contextmanager
def embedded_server(pgdata: str | os.PathLike[str] = DEFAULT_PGDATA) -> Iterator[str]:
    """Start (or join) the embedded server in ``pgdata`` and yield the URL of its forecasting database.

    The server stops when the last process using it leaves the block.
    """
    import pgserver  # only needed when no DATABASE_URL is given

    path = Path(pgdata).resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode="stop")
    try:
        _default_to_utc(server.get_uri())
        yield ensure_database(server.get_uri(), EMBEDDED_DATABASE)
    finally:
        server.cleanup()


def _default_to_utc(server_url: str) -> None:
    """Make UTC the server's default TimeZone (it is ours), for sessions that do not set one: psql, a dashboard."""
    # Without the UTC start-up option, so that SHOW answers the default such a session gets.
    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SHOW TimeZone").fetchone()[0] != "UTC":
            conn.execute("ALTER SYSTEM SET timezone = 'UTC'")
            conn.execute("SELECT pg_reload_conf()")


@contextmanager
def database_environment(
    given: str | None, given_dagster: str | None = None, pgdata: str | os.PathLike[str] = DEFAULT_PGDATA
) -> Iterator[dict[str, str]]:
    """Yield the environment a child process needs: DATABASE_URL and DAGSTER_PG_URL.

    Uses the ``given`` database (and ``given_dagster`` for Dagster's storage, else the same one);
    without one, starts the embedded server.
    """
    if given:
        yield {"DATABASE_URL": given, "DAGSTER_PG_URL": given_dagster or dagster_storage_url(given)}
        return
    with embedded_server(pgdata) as url:
        logger.info("started embedded PostgreSQL in %s", Path(pgdata).resolve())
        yield {
            "DATABASE_URL": url,
            "DAGSTER_PG_URL": dagster_storage_url(url),
            "FORECASTING_EMBEDDED_DB": "1",
        }
