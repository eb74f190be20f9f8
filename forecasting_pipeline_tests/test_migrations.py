"""The migration runner: ordered, recorded, transactional, safe to re-run, and the planned model_name change."""

import hashlib
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from forecasting_pipeline.storage.migrations import MigrationError, discover, migrate


def _columns(conn):
    return dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'ml_predictions'"
        ).fetchall()
    )


def test_when_migrations_run_twice_then_the_second_run_applies_nothing(empty_database_url):
    with psycopg.connect(empty_database_url) as conn:
        first = migrate(conn)
        second = migrate(conn)
        recorded = conn.execute("SELECT filename FROM schema_migrations ORDER BY filename").fetchall()

    assert first == [m.filename for m in discover()]
    assert second == []
    assert [r[0] for r in recorded] == first


def test_when_migrated_then_ml_predictions_has_the_row_contract(database_url):
    with psycopg.connect(database_url) as conn:
        columns = _columns(conn)
        default = conn.execute(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = 'ml_predictions' AND column_name = 'model_name'"
        ).fetchone()[0]

    assert columns["model_name"] == "text"
    assert columns["model_version"] == "text"
    assert columns["as_of"] == "timestamp with time zone"
    assert columns["predictions"] == "jsonb"
    assert default == "'kronos-base'::text"


def test_the_planned_model_name_migration_is_exactly_the_planned_change_with_its_index_built_concurrently():
    text = (Path(__file__).resolve().parents[1] / "migrations" / "20260423_ml_predictions_model_name.sql").read_text()
    statements = [line for line in text.splitlines() if line and not line.startswith("--")]

    assert statements == [
        "ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_name TEXT NOT NULL DEFAULT 'kronos-base';",
        "ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_version TEXT NULL;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ml_pred_symbol_model_ts ON ml_predictions(symbol, model_name, created_at DESC);",
    ]


def test_when_an_applied_migration_is_edited_then_the_runner_refuses(empty_database_url, tmp_path):
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);")
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn, tmp_path)
        (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(MigrationError, match="001_a.sql was changed after it was applied"):
            migrate(conn, tmp_path)


def test_when_a_migration_fails_then_none_of_it_is_applied(empty_database_url, tmp_path):
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE ok (x int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE half (x int);\nSELECT no_such_function();")
    with psycopg.connect(empty_database_url) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            migrate(conn, tmp_path)
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        recorded = [r[0] for r in conn.execute("SELECT filename FROM schema_migrations")]

    assert "ok" in tables and "half" not in tables
    assert recorded == ["001_ok.sql"]


# ---------------------------------------------------------------------------
# index builds on Kronos's live table

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
KRONOS_ROWS = 200_000


def test_every_index_build_on_ml_predictions_is_concurrent_outside_a_transaction():
    builds = []
    for migration in discover(MIGRATIONS):
        for statement in migration.statements():
            text = " ".join(statement.split())
            if re.search(r"CREATE (UNIQUE )?INDEX .* ON ml_predictions", text, re.IGNORECASE):
                builds.append((migration.filename, "CONCURRENTLY IF NOT EXISTS" in text, migration.outside_transaction))

    assert len(builds) == 4
    assert all(concurrent and outside for _, concurrent, outside in builds), builds


def _kronos_table_with_rows(url: str) -> None:
    """ml_predictions as Kronos has it before our migrations, holding 200k of its rows."""
    with psycopg.connect(url, autocommit=True) as kronos:
        kronos.execute((MIGRATIONS / "20260401_ml_predictions.sql").read_text())
        kronos.execute(
            "INSERT INTO ml_predictions (symbol, timeframe, created_at, predictions) "
            "SELECT 'SYM' || (i %% 50), '1h', timestamptz '2026-01-01 00:00+00' + make_interval(mins => i), "
            "'[{\"ts\": \"2026-01-01T01:00:00+00:00\", \"close\": 1.5}]'::jsonb FROM generate_series(1, %s) AS i",
            (KRONOS_ROWS,),
        )


def _build_in_progress(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT p.phase FROM pg_stat_progress_create_index p WHERE p.datname = current_database() "
            "AND p.command = 'CREATE INDEX CONCURRENTLY' AND p.relid = 'ml_predictions'::regclass"
        ).fetchone()
    return row[0] if row else None


def test_when_migrations_build_indexes_on_a_200k_row_kronos_table_then_kronos_inserts_meanwhile(empty_database_url):
    _kronos_table_with_rows(empty_database_url)
    # An open snapshot elsewhere: a concurrent build waits for it before it finishes, which holds
    # the build open while Kronos inserts. (A plain build in a transaction would not wait for it.)
    holder = psycopg.connect(empty_database_url)
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.execute("SELECT 1")
    outcome: dict = {}

    def run_migrations():
        try:
            with psycopg.connect(empty_database_url) as conn:
                outcome["applied"] = migrate(conn)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    migrating = threading.Thread(target=run_migrations)
    migrating.start()
    try:
        deadline = time.monotonic() + 60
        while _build_in_progress(empty_database_url) is None and time.monotonic() < deadline and migrating.is_alive():
            time.sleep(0.05)
        with psycopg.connect(empty_database_url, autocommit=True) as kronos:
            kronos.execute("SET lock_timeout = '5s'")
            kronos.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1h', '[]')")
        during = _build_in_progress(empty_database_url)
    finally:
        holder.rollback()
        holder.close()
        migrating.join(timeout=120)

    assert "error" not in outcome, outcome.get("error")
    assert during is not None
    assert outcome["applied"] == [m.filename for m in discover()]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ml_predictions").fetchone()[0] == KRONOS_ROWS + 1
        assert conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "WHERE c.relname = 'ml_predictions' AND NOT i.indisvalid"
        ).fetchone()[0] == 0


def test_when_a_concurrent_build_failed_then_its_invalid_index_is_dropped_and_built_again(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_ml_pred_scoring")
        conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('A', '1h', '[]'), ('B', '1h', '[]')")
        # A failed concurrent build of that name leaves an INVALID index behind.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_ml_pred_scoring ON ml_predictions (timeframe)")
        conn.execute("DELETE FROM schema_migrations WHERE filename = '20260702_ml_predictions_scoring_index.sql'")

        applied = migrate(conn)
        valid, definition = conn.execute(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = 'idx_ml_pred_scoring'"
        ).fetchone()

    assert applied == ["20260702_ml_predictions_scoring_index.sql"]
    assert valid and definition.endswith("USING btree (timeframe, id, created_at)")


def test_when_a_migration_is_rewritten_naming_its_former_checksum_then_it_is_accepted_and_not_reapplied(
    empty_database_url, tmp_path
):
    first = "CREATE TABLE a (x int);"
    (tmp_path / "001_a.sql").write_text(first)
    rewritten = f"-- previous-checksum: {hashlib.sha256(first.encode()).hexdigest()}\nCREATE TABLE IF NOT EXISTS a (x int);"
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn, tmp_path)
        (tmp_path / "001_a.sql").write_text(rewritten)
        again = migrate(conn, tmp_path)
        recorded = conn.execute("SELECT checksum FROM schema_migrations").fetchone()[0]
        conn.commit()
        (tmp_path / "001_a.sql").write_text(rewritten + "\nCREATE TABLE b (y int);")
        with pytest.raises(MigrationError, match="001_a.sql was changed after it was applied"):
            migrate(conn, tmp_path)

    assert again == []
    assert recorded == hashlib.sha256(rewritten.encode()).hexdigest()


def test_when_a_transactional_migration_builds_concurrently_then_the_runner_says_what_to_add(empty_database_url, tmp_path):
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);\nCREATE INDEX CONCURRENTLY a_x ON a (x);")
    with psycopg.connect(empty_database_url) as conn:
        with pytest.raises(MigrationError, match="add the header '-- transaction: none'"):
            migrate(conn, tmp_path)
