"""What the benchmark scripts share: the cache folder, the random checkpoints they build once, and a fresh database.

Not a script: the scripts beside it import it (they put this folder on ``sys.path``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
# The published geometry with random weights: the real model's compute cost, meaningless forecasts.
CHECKPOINT = CACHE / "chronos2-full-random"
# The chronos package's test geometry: what every --smoke run loads (milliseconds).
TINY_CHECKPOINT = CACHE / "chronos2-tiny-random"
SMOKE_HELP = "tiny model, few windows, seconds: checks that the benchmark still runs, measures nothing"


def checkpoint(size: str) -> Path:
    """The cached random checkpoint of ``size`` ("full" or "tiny"), written once.

    Written to a temporary folder and renamed, so that scripts started together (the test suite's
    smoke runs) never read a half-written one.
    """
    from forecasting_pipeline.forecasting.model import write_random_checkpoint

    path = {"full": CHECKPOINT, "tiny": TINY_CHECKPOINT}[size]
    if (path / "config.json").exists():
        return path
    CACHE.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{path.name}-"))
    try:
        write_random_checkpoint(scratch, size)
        try:
            scratch.rename(path)
        except OSError:
            if not (path / "config.json").exists():  # not another process's copy that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


@contextmanager
def server_url() -> Iterator[str]:
    """DATABASE_URL's server when set, else the benchmarks' embedded one (``benchmarks/.cache/pgdata``)."""
    from forecasting_pipeline.storage.embedded_postgres import embedded_server

    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    with embedded_server(CACHE / "pgdata") as url:
        yield url


@contextmanager
def fresh_database(prefix: str = "bench") -> Iterator[str]:
    """A fresh, migrated database on ``server_url()``'s server; dropped afterwards."""
    import psycopg
    from psycopg import sql

    from forecasting_pipeline.storage.embedded_postgres import _with_database
    from forecasting_pipeline.storage.migrations import migrate

    with server_url() as server:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(server, name)
        try:
            with psycopg.connect(url) as conn:
                migrate(conn)
            yield url
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
