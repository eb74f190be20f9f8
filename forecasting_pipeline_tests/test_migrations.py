"""The migration runner: ordered, recorded, transactional, safe to re-run, and the planned model_name change."""

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
