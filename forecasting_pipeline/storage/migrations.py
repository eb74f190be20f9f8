"""The migration runner: ordered SQL files, each applied once, recorded by checksum.

A file may declare the table shape it relies on in a header comment::

    -- expects: ml_predictions(symbol text, timeframe text)
    -- expects-if-exists: ml_predictions(symbol text)

The runner checks those columns and types against ``information_schema`` before applying the
file and refuses, saying what differs, so a migration never runs against a table it does not
understand (for example a Kronos table whose shape changed).

A file is applied in one transaction, unless it says ``-- transaction: none``. Such a file builds
indexes on a table another system writes (``ml_predictions``: Kronos inserts all day) with
``CREATE INDEX CONCURRENTLY``, which cannot run in a transaction and, unlike a plain build, lets
inserts go on while it reads the table. Its statements run one by one, so each must be safe to run
again (``IF NOT EXISTS``): a file that fails half-way is not recorded and runs whole next time. A
concurrent build that failed leaves an INVALID index of that name behind, which ``IF NOT EXISTS``
would take for done; the runner drops such an index (concurrently) and builds it again.

A file rewritten after it was applied is refused, unless it names the checksum it had
(``-- previous-checksum: <sha256>``): that is how a file is changed to apply the same change in a
safer way (its index builds made concurrent), without re-applying it where it is applied.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql

logger = logging.getLogger(__name__)

# Serialises concurrent runners (make dev beside make run, parallel test sessions) on one database.
MIGRATION_LOCK_KEY = 0x63686D67  # "chmg"

_EXPECT = re.compile(r"^--\s*expects(?P<if_exists>-if-exists)?:\s*(?P<table>[A-Za-z_][A-Za-z0-9_]*)\((?P<cols>[^)]*)\)\s*$")

_NO_TRANSACTION = re.compile(r"^--\s*transaction:\s*none\s*$", re.MULTILINE)
_PREVIOUS_CHECKSUM = re.compile(r"^--\s*previous-checksum:\s*(?P<sha>[0-9a-f]{64})\s*$", re.MULTILINE)
_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE
)
_ANY_CONCURRENT = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)

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
    def outside_transaction(self) -> bool:
        """Whether the file says ``-- transaction: none``: its statements run one by one, in autocommit."""
        return bool(_NO_TRANSACTION.search(self.sql))

    @property
    def previous_checksums(self) -> frozenset[str]:
        """Checksums the file had before it was rewritten to apply the same change (``-- previous-checksum:``)."""
        return frozenset(match["sha"] for match in _PREVIOUS_CHECKSUM.finditer(self.sql))

    def statements(self) -> list[str]:
        """The file's statements, split as PostgreSQL would (quotes, dollar quotes and comments respected)."""
        return [s for s in sqlparse.split(self.sql) if sqlparse.format(s, strip_comments=True).strip()]

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

    Safe to re-run: applied files are skipped, and a file edited after it was applied is an error
    (unless it names its former checksum). The session runs in UTC, as every connection of the
    project does, so a migration reads and writes instants the same way whoever opened ``conn``.
    """
    migrations = discover(directory)
    applied_now: list[str] = []
    previous_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            done = applied_migrations(conn)
            for migration in migrations:
                if migration.filename in done:
                    _check_unchanged(conn, migration, done[migration.filename])
                    continue
                if migration.outside_transaction:
                    _apply_statement_by_statement(conn, migration)
                else:
                    _apply_in_transaction(conn, migration)
                logger.info("applied migration %s", migration.filename)
                applied_now.append(migration.filename)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        conn.autocommit = previous_autocommit
    return applied_now


def _check_unchanged(conn: psycopg.Connection, migration: Migration, recorded: str) -> None:
    if recorded == migration.checksum:
        return
    if recorded in migration.previous_checksums:
        conn.execute("UPDATE schema_migrations SET checksum = %s WHERE filename = %s",
                     (migration.checksum, migration.filename))
        logger.info("migration %s was rewritten to apply the same change; its record now holds the new checksum",
                    migration.filename)
        return
    raise MigrationError(f"{migration.filename} was changed after it was applied; add a new migration instead")


def _record(conn: psycopg.Connection, migration: Migration) -> None:
    conn.execute("INSERT INTO schema_migrations (filename, checksum) VALUES (%s, %s)",
                 (migration.filename, migration.checksum))


def _apply_in_transaction(conn: psycopg.Connection, migration: Migration) -> None:
    if _ANY_CONCURRENT.search(sqlparse.format(migration.sql, strip_comments=True)):
        raise MigrationError(f"{migration.filename}: CONCURRENTLY cannot run in a transaction; "
                             "add the header '-- transaction: none' (and make every statement safe to re-run)")
    with conn.transaction():
        check_expectations(conn, migration)
        conn.execute(migration.sql)
        _record(conn, migration)


def _apply_statement_by_statement(conn: psycopg.Connection, migration: Migration) -> None:
    """Each statement in its own implicit transaction; the file is recorded once all have run."""
    check_expectations(conn, migration)
    for statement in migration.statements():
        index = _CONCURRENT_INDEX.search(statement)
        if index:
            drop_invalid_index(conn, index["name"])
        conn.execute(statement)
    _record(conn, migration)


def drop_invalid_index(conn: psycopg.Connection, name: str) -> bool:
    """Drop the index ``name`` of the current schema if a failed concurrent build left it INVALID; whether it did.

    ``conn`` must be in autocommit: the drop is concurrent too, so it does not block writers either.
    """
    invalid = conn.execute(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace",
        (name,),
    ).fetchone()
    if not invalid or not invalid[0]:
        return False
    logger.warning("index %s is INVALID (a concurrent build of it failed); dropping it to build it again", name)
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    return True
