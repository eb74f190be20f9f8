"""The migration runner: ordered SQL files, each applied once, in a transaction, recorded by checksum.

A file may declare the table shape it relies on in a header comment::

    -- expects: ml_predictions(symbol text, timeframe text)
    -- expects-if-exists: ml_predictions(symbol text)

The runner checks those columns and types against ``information_schema`` before applying the
file and refuses, saying what differs, so a migration never runs against a table it does not
understand (for example a Kronos table whose shape changed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger(__name__)

# Serialises concurrent runners (make dev beside make run, parallel test sessions) on one database.
MIGRATION_LOCK_KEY = 0x63686D67  # "chmg"

_EXPECT = re.compile(r"^--\s*expects(?P<if_exists>-if-exists)?:\s*(?P<table>[A-Za-z_][A-Za-z0-9_]*)\((?P<cols>[^)]*)\)\s*$")

_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    filename   TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied safely; nothing of it was applied."""


@dataclass(frozen=True)
class Expectation:
    table: str
    columns: dict[str, str]
    only_if_exists: bool


@dataclass(frozen=True)
class Migration:
    path: Path
    sql: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def expectations(self) -> list[Expectation]:
        found = []
        for line in self.sql.splitlines():
            match = _EXPECT.match(line.strip())
            if match:
                columns = {}
                for spec in match["cols"].split(","):
                    name, _, type_ = spec.strip().partition(" ")
                    columns[name] = type_.strip().lower()
                found.append(Expectation(match["table"], columns, bool(match["if_exists"])))
        return found


def default_migrations_dir() -> Path:
    """The repository's ``migrations/`` folder, as the installed package holds it.

    A wheel (``pip install .``) carries the folder as the data package
    ``forecasting_pipeline._migrations`` (pyproject.toml); a source checkout, editable installs
    included, reads it where it lies.
    """
    packaged = importlib.util.find_spec("forecasting_pipeline._migrations")
    if packaged is None or not packaged.submodule_search_locations:
        return Path(__file__).resolve().parents[2] / "migrations"
    return Path(next(iter(packaged.submodule_search_locations)))


def discover(directory: Path | None = None) -> list[Migration]:
    """Return the ``*.sql`` files of ``directory`` in filename order."""
    directory = directory or default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    return [Migration(path, path.read_text()) for path in sorted(directory.glob("*.sql"))]


def _table_columns(conn: psycopg.Connection, table: str) -> dict[str, str] | None:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {name: type_ for name, type_ in rows} if rows else None


def check_expectations(conn: psycopg.Connection, migration: Migration) -> None:
    """Raise MigrationError naming every column that is missing or of another type."""
    for expectation in migration.expectations:
        actual = _table_columns(conn, expectation.table)
        if actual is None:
            if expectation.only_if_exists:
                continue
            raise MigrationError(f"{migration.filename}: table {expectation.table} does not exist")
        problems = []
        for column, type_ in expectation.columns.items():
            if column not in actual:
                problems.append(f"column {column} is missing (expected {type_})")
            elif actual[column] != type_:
                problems.append(f"column {column} is {actual[column]}, expected {type_}")
        if problems:
            raise MigrationError(
                f"{migration.filename}: refusing to migrate table {expectation.table} of unexpected shape: "
                + "; ".join(problems)
            )


def applied_migrations(conn: psycopg.Connection) -> dict[str, str]:
    """Filename -> checksum of every migration already applied."""
    conn.execute(_RECORD_TABLE)
    return dict(conn.execute("SELECT filename, checksum FROM schema_migrations").fetchall())


def migrate(conn: psycopg.Connection, directory: Path | None = None) -> list[str]:
    """Apply every pending migration in order; return the filenames applied now.

    Safe to re-run: applied files are skipped, and a file edited after it was applied is an error.
    """
    migrations = discover(directory)
    applied_now: list[str] = []
    previous_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            done = applied_migrations(conn)
            for migration in migrations:
                if migration.filename in done:
                    if done[migration.filename] != migration.checksum:
                        raise MigrationError(
                            f"{migration.filename} was changed after it was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    check_expectations(conn, migration)
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (filename, checksum) VALUES (%s, %s)",
                        (migration.filename, migration.checksum),
                    )
                logger.info("applied migration %s", migration.filename)
                applied_now.append(migration.filename)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        conn.autocommit = previous_autocommit
    return applied_now
