"""Reliability and security against real PostgreSQL and real Dagster runs: bad bars, dead connections,
racing writers, migrations on unexpected or full tables, secrets, pickle checkpoints and least privilege."""

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import psycopg
import pytest
from psycopg import sql

from forecasting_pipeline.forecasting.model import ModelUnavailableError, load_chronos2
from forecasting_pipeline.market.calendars import last_bar_close
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource
from forecasting_pipeline.storage.database import DatabaseUnavailableError
from forecasting_pipeline.storage.ensemble_weights import WeightsRow, write_ensemble
from forecasting_pipeline.storage.migrations import MigrationError, migrate
from forecasting_pipeline.storage.ml_predictions import (
    CHALLENGER_MODEL_NAME,
    KRONOS_MODEL_NAME,
    PredictionRow,
    upsert_window,
    window_lock_name,
)
from forecasting_pipeline.storage.model_registry import NewCheckpoint, register
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

WINDOW = "2025-06-02"
WINDOW_END = datetime(2025, 6, 3, tzinfo=timezone.utc)
OPTIONAL_MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations" / "optional"
OPTIONAL_FILES = [
    "20260615_chronos_writer_rls.sql", "20260801_ensemble_writer_rls.sql", "20260901_challenger_writer_rls.sql",
    "20261205_rerun_writer_rls.sql",
]
SECRET = "pw-Zq8-never-printed"


def chronos_rows(conn, timeframe="1d"):
    return conn.execute(
        "SELECT symbol, as_of, model_version, jsonb_array_length(predictions) FROM ml_predictions "
        "WHERE model_name = 'chronos-2' AND timeframe = %s ORDER BY symbol, as_of",
        (timeframe,),
    ).fetchall()


def window_rows(symbols, version="v", steps=10):
    """One Chronos-2 row per symbol for the daily window, as_of on each symbol's calendar."""
    universe = {i.symbol: i for i in load_instruments()}
    rows = []
    for symbol in symbols:
        as_of = last_bar_close(universe[symbol].calendar, "1d", WINDOW_END)
        steps_json = [{"step": k, "ts": as_of.isoformat(), "p10": 1.0, "p50": 2.0, "p90": 3.0, "close": 2.0}
                      for k in range(1, steps + 1)]
        rows.append(PredictionRow(symbol, "1d", "chronos-2", version, as_of, steps_json))
    return rows


def event_text(instance, result) -> str:
    """Everything Dagster stored about a run: every event (messages, errors, metadata) and the run itself."""
    records = instance.all_logs(result.run_id)
    return "\n".join(dg.serialize_value(r) for r in records) + dg.serialize_value(instance.get_run_by_id(result.run_id))


def user_error(result, step_key) -> str:
    """The message of the user-code exception that failed ``step_key`` (Dagster wraps it)."""
    error = [e for e in result.get_step_failure_events() if e.step_key == step_key][-1].step_failure_data.error
    while error.cause is not None:
        error = error.cause
    return error.message


def _restarted(pgserver, pgdata):
    """The server in ``pgdata`` started again, or None while the stopped one is still shutting down."""
    try:
        return pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception:  # noqa: BLE001 - pgserver raises a bare Exception while the old postmaster exits
        return None


def wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# ---------------------------------------------------------------------------
# bad market data through a real run


@pytest.fixture
def files_resources(resources, bar_files):
    """The test resources on the files source, restricted to three instruments of three calendars."""
    symbols = ["AAPL", "BTC-USD", "EURUSD"]
    for instrument in select_instruments(load_instruments(), symbols):
        bar_files.write(instrument.symbol, sample_bars(instrument, "1d", WINDOW_END, 200))
    return {
        **resources,
        "instruments": InstrumentsResource(symbols=symbols),
        "market_data": MarketDataResource(source="files", path=str(bar_files.root)),
    }


def test_when_one_instruments_file_is_bad_then_the_others_are_written_and_its_check_fails(
    files_resources, bar_files, instance, conn
):
    (bar_files.root / "1d" / "AAPL.parquet").write_bytes(b"not a parquet file")

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance)

    assert result.success
    assert [(s, n) for s, _, _, n in chronos_rows(conn)] == [("BTC-USD", 10), ("EURUSD", 10)]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.asset_key.path == ["ohlcv_1d"]}
    assert checks == {"bars_valid_AAPL": False, "bars_valid_BTC_USD": True, "bars_valid_EURUSD": True}
    metadata = result.asset_materializations_for_node("ohlcv_1d")[0].metadata
    assert metadata["excluded"].value == {"AAPL": [WINDOW]}
    assert "| 2025-06-02 | AAPL | None | unreadable | excluded |" in metadata["findings_table"].value


def _at_level(bars, level: float):
    """Bars whose prices sit at ``level`` and barely move: finite, positive and consistent, so validation passes."""
    wiggle = 1 + 1e-4 * np.sin(np.arange(bars.height))
    return bars.with_columns(
        open=pl.lit(level * wiggle), close=pl.lit(level * wiggle),
        high=pl.lit(level * wiggle * (1 + 1e-5)), low=pl.lit(level * wiggle * (1 - 1e-5)),
    )


@pytest.mark.parametrize("level, failed_check, rejected_as", [
    # The model computes in float32, where 1e41 is infinite; sent to the model, one infinite value
    # turns every series of the batch into NaN, so AAPL must be left out before the call.
    (1e41, "inputs_in_model_range", "| 2025-06-02 | AAPL | model_input | close 1e+41 at bar "),
    # Just inside float32, so the input is taken; the forecast above it is infinite.
    (3.39e38, "quantiles_ordered_and_finite", "| 2025-06-02 | AAPL | non_finite | non-finite quantile at "),
], ids=["input beyond float32", "forecast overflows"])
def test_when_one_instruments_forecast_cannot_be_stored_then_the_others_are_written_and_its_check_fails(
    level, failed_check, rejected_as, files_resources, bar_files, instance, conn
):
    aapl = select_instruments(load_instruments(), ["AAPL"])[0]
    bar_files.write("AAPL", _at_level(sample_bars(aapl, "1d", WINDOW_END, 200), level))

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance)

    assert result.success
    assert [(s, n) for s, _, _, n in chronos_rows(conn)] == [("BTC-USD", 10), ("EURUSD", 10)]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
              if e.asset_key.path == ["chronos2_forecasts_1d"]}
    assert checks == {name: name != failed_check
                      for name in ("inputs_in_model_range", "quantiles_ordered_and_finite", "horizon_complete")}
    metadata = result.asset_materializations_for_node("chronos2_forecasts_1d")[0].metadata
    assert metadata["rejected"].value == {"AAPL": [WINDOW]}
    assert rejected_as in metadata["rejected_table"].value


def test_when_every_instruments_forecast_is_rejected_then_the_run_fails_clearly_and_writes_nothing(
    files_resources, bar_files, instance, conn
):
    for instrument in select_instruments(load_instruments(), ["AAPL", "BTC-USD", "EURUSD"]):
        bar_files.write(instrument.symbol, _at_level(sample_bars(instrument, "1d", WINDOW_END, 200), 1e41))

    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance, raise_on_error=False
    )

    assert not result.success
    assert user_error(result, "chronos2_forecasts_1d").startswith(
        "forecasting_pipeline.forecasting.shaping.AllForecastsRejectedError: window 2025-06-02: every instrument's forecast "
        "was rejected, so nothing is written. AAPL: model_input: close 1e+41 at bar "
    )
    assert chronos_rows(conn) == []


def test_when_every_instrument_is_excluded_then_the_run_fails_clearly_and_writes_nothing(
    files_resources, bar_files, instance, conn
):
    for symbol in ("AAPL", "BTC-USD", "EURUSD"):
        bar_files.write_bytes(symbol, b"ts,open\n", fmt="parquet")

    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance, raise_on_error=False
    )

    assert not result.success
    assert user_error(result, "ohlcv_1d").startswith(
        "forecasting_pipeline.market.validation.AllInstrumentsExcludedError: window 2025-06-02: every instrument (3) was "
        "excluded by bar validation, so nothing is forecast or written. AAPL: unreadable: "
    )
    assert chronos_rows(conn) == []


def test_when_a_symbol_is_unknown_then_the_run_fails_before_any_write(resources, instance, conn):
    resources = {**resources, "instruments": InstrumentsResource(symbols=["AAPL", "NOPE"])}

    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=resources, instance=instance, raise_on_error=False
    )

    assert not result.success
    assert user_error(result, "ohlcv_1d").startswith("ValueError: unknown symbols ['NOPE']: not in the instrument universe")
    assert chronos_rows(conn) == []


def test_when_the_horizon_is_unsupported_then_the_run_fails_before_any_write(files_resources, instance, conn):
    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance, raise_on_error=False,
        run_config=dg.RunConfig({"chronos2_forecasts_1d": {"config": {"horizon": 5000}}}),
    )

    assert not result.success
    assert user_error(result, "chronos2_forecasts_1d") == "ValueError: unsupported horizon 5000: Chronos-2 forecasts 1 to 1024 steps\n"
    assert chronos_rows(conn) == []


# ---------------------------------------------------------------------------
# database faults


def test_when_the_connection_is_killed_mid_write_then_nothing_partial_shows_and_the_retry_writes_the_set_once(
    files_resources, instance, conn, database_url
):
    # An uncommitted row on the last symbol's key makes the writer wait there, after it has
    # inserted (uncommitted) the rows before it: that is the middle of the window's write.
    blocked_as_of = last_bar_close("24/5", "1d", WINDOW_END)
    blocker = psycopg.connect(database_url)
    blocker.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, model_name, as_of, predictions) "
        "VALUES ('EURUSD', '1d', 'chronos-2', %s, '[]')",
        (blocked_as_of,),
    )
    seen: dict[str, object] = {}

    def kill_mid_write():
        pid = wait_for(lambda: conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE '%%INSERT INTO ml_predictions%%' AND pid <> %s",
            (blocker.info.backend_pid,),
        ).fetchone())[0]
        seen["visible_mid_write"] = chronos_rows(conn)
        seen["terminated"] = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        blocker.rollback()

    killer = threading.Thread(target=kill_mid_write)
    killer.start()
    try:
        result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=files_resources, instance=instance)
    finally:
        killer.join()
        blocker.close()

    assert seen == {"visible_mid_write": [], "terminated": True}
    assert result.success
    retries = [e for e in instance.all_logs(result.run_id) if e.dagster_event
               and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert [e.step_key for e in retries] == ["ml_predictions_1d"]
    rows = chronos_rows(conn)
    assert [(s, n) for s, _, _, n in rows] == [("AAPL", 10), ("BTC-USD", 10), ("EURUSD", 10)]
    assert rows[2][1] == blocked_as_of


def test_when_two_runs_write_one_window_at_once_then_exactly_one_runs_set_remains(database_url, conn):
    symbols = [i.symbol for i in load_instruments()]
    # Hold the window's lock so both writers are in flight at the same time before either writes.
    gate = psycopg.connect(database_url)
    gate.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (window_lock_name("1d", WINDOW),))
    errors = []

    def write(version):
        try:
            with psycopg.connect(database_url) as writer:
                upsert_window(writer, window_rows(symbols, version), window=WINDOW)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in ("run-a", "run-b")]
    for t in threads:
        t.start()
    wait_for(lambda: conn.execute(
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    ).fetchone()[0])
    gate.rollback()
    gate.close()
    for t in threads:
        t.join()

    assert errors == []
    rows = chronos_rows(conn)
    assert [s for s, *_ in rows] == sorted(symbols)
    assert len({version for _, _, version, _ in rows}) == 1


def test_when_a_write_fails_part_way_then_the_window_rolls_back_whole_and_a_rerun_writes_it_once(conn):
    symbols = [i.symbol for i in load_instruments()]
    bad = window_rows(symbols)
    # PostgreSQL text cannot hold a NUL byte: the sixth row fails after five were sent.
    bad[5] = PredictionRow("BAD\x00", "1d", "chronos-2", "v", bad[5].as_of, bad[5].predictions)

    with pytest.raises(psycopg.DataError, match="NUL"):
        upsert_window(conn, bad, window=WINDOW)
    assert chronos_rows(conn) == []

    assert upsert_window(conn, window_rows(symbols), window=WINDOW) == 23
    assert upsert_window(conn, window_rows(symbols), window=WINDOW) == 23
    assert [s for s, *_ in chronos_rows(conn)] == sorted(symbols)


def test_when_postgres_is_unreachable_then_the_error_names_host_and_database_and_never_the_password(
    resources, instance, conn, database_url, monkeypatch, capfd
):
    conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fp_secret_user') THEN "
        "CREATE ROLE fp_secret_user LOGIN; END IF; END $$"
    )
    conn.execute(sql.SQL("ALTER ROLE fp_secret_user PASSWORD {}").format(sql.Literal(SECRET)))
    # What the pipeline's login role needs: a window's re-run deletes the rows it no longer makes.
    conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ml_predictions, ml_prediction_windows TO fp_secret_user")
    conn.execute("GRANT USAGE ON SEQUENCE ml_predictions_id_seq TO fp_secret_user")
    dbname = conn.info.dbname
    socket_dir = conn.info.host
    good_url = f"postgresql://fp_secret_user:{SECRET}@/{dbname}?host={socket_dir}"
    bad_url = f"postgresql://fp_secret_user:{SECRET}@127.0.0.1:1/{dbname}"
    monkeypatch.setenv("FP_TEST_SECRET_URL", good_url)
    chain = build_chain(DAILY_WINDOWS, SYMBOLS)
    secret_resources = {
        **resources,
        "instruments": InstrumentsResource(symbols=["AAPL", "BTC-USD", "EURUSD"]),
        "database": PostgresResource(url=dg.EnvVar("FP_TEST_SECRET_URL")),
    }

    good = dg.materialize(chain, partition_key=WINDOW, resources=secret_resources, instance=instance)

    monkeypatch.setenv("FP_TEST_SECRET_URL", bad_url)
    # The whole chain again: the good run deleted the window's frames once its rows were committed.
    bad = dg.materialize(
        chain, partition_key=WINDOW, instance=instance, raise_on_error=False,
        resources={**secret_resources, "database": PostgresResource(
            url=dg.EnvVar("FP_TEST_SECRET_URL"), connect_attempts=2, connect_backoff_s=0.01)},
    )
    with pytest.raises(DatabaseUnavailableError) as direct:
        with PostgresResource(url=f"postgresql://fp_secret_user:{SECRET}@/{dbname}?host=/nonexistent",
                              connect_attempts=1).connection():
            pass

    assert good.success
    assert [s for s, *_ in chronos_rows(conn)] == ["AAPL", "BTC-USD", "EURUSD"]
    assert not bad.success
    assert user_error(bad, "ml_predictions_1d").startswith(
        f"forecasting_pipeline.storage.database.DatabaseUnavailableError: PostgreSQL at 127.0.0.1:1/{dbname} is unreachable"
    )
    retries = [e for e in instance.all_logs(bad.run_id) if e.dagster_event
               and e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retries) == 2
    assert str(direct.value).startswith(f"PostgreSQL at /nonexistent:5432/{dbname} is unreachable after 1 attempts")
    captured = capfd.readouterr()
    everything = "\n".join([event_text(instance, good), event_text(instance, bad), str(direct.value),
                            captured.out, captured.err])
    assert "127.0.0.1:1" in everything
    assert SECRET not in everything


# ---------------------------------------------------------------------------
# migrations


KRONOS_TABLE = """
CREATE TABLE ml_predictions (
    id BIGSERIAL PRIMARY KEY, symbol TEXT NOT NULL, timeframe TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), predictions {predictions_type} NOT NULL
)
"""
KRONOS_CHECKSUM = (
    "SELECT count(*), md5(string_agg(concat_ws('|', id, symbol, timeframe, created_at, predictions::text), ',' ORDER BY id)) "
    "FROM ml_predictions"
)


def test_when_the_table_has_an_unexpected_column_type_then_migrations_refuse_and_change_nothing(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as c:
        c.execute(KRONOS_TABLE.format(predictions_type="TEXT"))
        c.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1h', '[]')")

        with pytest.raises(MigrationError, match=(
            "20260401_ml_predictions.sql: refusing to migrate table ml_predictions of unexpected shape: "
            "column predictions is text, expected jsonb"
        )):
            migrate(c)

        columns = [r[0] for r in c.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ml_predictions' ORDER BY ordinal_position"
        ).fetchall()]
        assert columns == ["id", "symbol", "timeframe", "created_at", "predictions"]
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_when_the_table_is_full_of_kronos_rows_then_migrations_leave_every_row_unchanged(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as c:
        c.execute(KRONOS_TABLE.format(predictions_type="JSONB"))
        c.execute(
            "INSERT INTO ml_predictions (symbol, timeframe, created_at, predictions) "
            "SELECT 'SYM' || (g % 23), CASE WHEN g % 2 = 0 THEN '1h' ELSE '1d' END, "
            "       timestamptz '2026-01-01' + g * interval '1 hour', "
            "       jsonb_build_array(jsonb_build_object('ts', g, 'close', g * 1.5)) "
            "FROM generate_series(1, 2000) AS g"
        )
        before = c.execute(KRONOS_CHECKSUM).fetchone()

        first = migrate(c)
        after_first = c.execute(KRONOS_CHECKSUM).fetchone()
        second = migrate(c)
        after_second = c.execute(KRONOS_CHECKSUM).fetchone()
        optional = migrate(c, OPTIONAL_MIGRATIONS)

        assert before[0] == 2000
        assert first and second == []
        assert optional == OPTIONAL_FILES
        assert before == after_first == after_second == c.execute(KRONOS_CHECKSUM).fetchone()
        assert c.execute(
            "SELECT model_name, count(*), count(as_of), count(model_version) FROM ml_predictions GROUP BY 1"
        ).fetchall() == [(KRONOS_MODEL_NAME, 2000, 0, 0)]


# ---------------------------------------------------------------------------
# least privilege


@pytest.fixture
def rls_conn(conn):
    """The migrated test database with the optional chronos_writer migrations applied, plus a Kronos row."""
    assert migrate(conn, OPTIONAL_MIGRATIONS) == OPTIONAL_FILES
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1d', '[{\"ts\": 1, \"close\": 2}]')"
    )
    return conn


def kronos_rows(conn):
    return conn.execute(
        "SELECT symbol, model_name, model_version, predictions FROM ml_predictions WHERE model_name = 'kronos-base'"
    ).fetchall()


@pytest.mark.parametrize("role", ["chronos_writer", "fp_chronos_member"])
def test_when_writing_as_the_chronos_writer_role_then_chronos_rows_go_in_and_kronos_rows_cannot_change(rls_conn, role):
    rls_conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fp_chronos_member') THEN "
        "CREATE ROLE fp_chronos_member NOLOGIN IN ROLE chronos_writer; END IF; END $$"
    )
    kronos_before = kronos_rows(rls_conn)
    rls_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        assert upsert_window(rls_conn, window_rows(["AAPL", "BTC-USD"], "first"), window=WINDOW) == 2
        assert upsert_window(rls_conn, window_rows(["AAPL", "BTC-USD"], "second"), window=WINDOW) == 2
        # A re-run that leaves BTC-USD out deletes its row of the window: the role may delete its own rows.
        assert upsert_window(rls_conn, window_rows(["AAPL"], "third"), window=WINDOW) == 1

        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            rls_conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1d', '[]')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            rls_conn.execute("UPDATE ml_predictions SET model_name = 'kronos-base' WHERE model_name = 'chronos-2'")
        updated = rls_conn.execute("UPDATE ml_predictions SET model_version = 'x' WHERE model_name = 'kronos-base'")
        assert updated.rowcount == 0
        # Kronos's rows are hidden from its deletes.
        assert rls_conn.execute("DELETE FROM ml_predictions WHERE model_name = 'kronos-base'").rowcount == 0
        hostile = "AAPL'; UPDATE ml_predictions SET model_name = 'chronos-2'; --"
        assert rls_conn.execute("SELECT count(*) FROM ml_predictions WHERE symbol = %s", (hostile,)).fetchone()[0] == 0
    finally:
        rls_conn.execute("RESET ROLE")

    assert kronos_rows(rls_conn) == kronos_before
    assert [(s, v) for s, _, v, _ in chronos_rows(rls_conn)] == [("AAPL", "third")]


def test_when_writing_as_the_chronos_writer_role_then_ensemble_rows_and_their_weights_go_in_and_kronos_stays_out(
    rls_conn,
):
    kronos_before = kronos_rows(rls_conn)
    ensemble = [PredictionRow(r.symbol, r.timeframe, "ensemble", "ens", r.as_of, r.predictions)
                for r in window_rows(["AAPL", "BTC-USD"])]
    weights = [WeightsRow(r.symbol, r.as_of, {"chronos-2": {"location": 1.0, "band": 1.0}}, {}, {}) for r in ensemble]
    rls_conn.execute("SET ROLE chronos_writer")
    try:
        assert write_ensemble(rls_conn, "1d", "ens", {WINDOW: ensemble}, weights) == {WINDOW: 2}
        assert write_ensemble(rls_conn, "1d", "ens", {WINDOW: ensemble}, weights) == {WINDOW: 2}
        # A re-run without BTC-USD removes its ensemble row and, with it, its weights.
        assert write_ensemble(rls_conn, "1d", "ens", {WINDOW: ensemble[:1]}, weights[:1]) == {WINDOW: 1}
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            rls_conn.execute("UPDATE ml_predictions SET model_name = 'kronos-base' WHERE model_name = 'ensemble'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            rls_conn.execute("INSERT INTO ml_predictions (symbol, timeframe, model_name, predictions) "
                             "VALUES ('AAPL', '1d', 'kronos-base', '[]')")
    finally:
        rls_conn.execute("RESET ROLE")

    assert kronos_rows(rls_conn) == kronos_before
    assert rls_conn.execute("SELECT symbol FROM ml_predictions WHERE model_name = 'ensemble'").fetchall() == [("AAPL",)]
    assert rls_conn.execute("SELECT symbol FROM ensemble_weights").fetchall() == [("AAPL",)]


def test_when_writing_as_the_chronos_writer_role_then_challenger_rows_and_the_registry_go_in(rls_conn):
    challenger = [PredictionRow(r.symbol, r.timeframe, CHALLENGER_MODEL_NAME, "ch", r.as_of, r.predictions)
                  for r in window_rows(["AAPL"])]
    new = NewCheckpoint("1d", "ab" * 32, "ch", "/models/ch", "base", "r", "base@r", "lora", WINDOW_END, WINDOW_END,
                        10, ["AAPL"], 1, 1e-5, 8, 64, 10, 0, None, "cpu", 1.0)
    rls_conn.execute("SET ROLE chronos_writer")
    try:
        assert upsert_window(rls_conn, challenger, window=WINDOW, model_name=CHALLENGER_MODEL_NAME) == 1
        found, added = register(rls_conn, new, actor="test")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            rls_conn.execute("DELETE FROM chronos2_checkpoints")
    finally:
        rls_conn.execute("RESET ROLE")

    assert added and found.status == "challenger"
    assert rls_conn.execute("SELECT count(*) FROM ml_predictions WHERE model_name = %s",
                            (CHALLENGER_MODEL_NAME,)).fetchone()[0] == 1


def test_when_another_non_owner_role_writes_then_row_level_security_changes_nothing_for_it(rls_conn):
    rls_conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fp_kronos_writer') THEN "
        "CREATE ROLE fp_kronos_writer NOLOGIN; END IF; END $$"
    )
    rls_conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ml_predictions TO fp_kronos_writer")
    rls_conn.execute("GRANT USAGE ON SEQUENCE ml_predictions_id_seq TO fp_kronos_writer")
    rls_conn.execute("SET ROLE fp_kronos_writer")
    try:
        rls_conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('MSFT', '1d', '[]')")
        updated = rls_conn.execute("UPDATE ml_predictions SET model_version = 'kronos-v2' WHERE model_name = 'kronos-base'")
        deleted = rls_conn.execute("DELETE FROM ml_predictions WHERE symbol = 'MSFT'")
        visible = rls_conn.execute("SELECT count(*) FROM ml_predictions").fetchone()[0]
    finally:
        rls_conn.execute("RESET ROLE")

    assert (updated.rowcount, deleted.rowcount, visible) == (2, 1, 1)


def test_when_the_optional_migration_runs_in_a_second_database_then_the_existing_role_is_reused(rls_conn, server_url):
    # rls_conn created the cluster-wide role already; a fresh database must still migrate cleanly.
    from forecasting_pipeline_tests.conftest import _drop_database, _fresh_database

    name, url = _fresh_database(server_url, "fp_rls")
    try:
        with psycopg.connect(url, autocommit=True) as c:
            migrate(c)
            assert migrate(c, OPTIONAL_MIGRATIONS) == OPTIONAL_FILES
            assert migrate(c, OPTIONAL_MIGRATIONS) == []
            policies = c.execute("SELECT policyname FROM pg_policies WHERE tablename = 'ml_predictions' ORDER BY 1").fetchall()
        assert [p for (p,) in policies] == [
            "chronos_writer_delete", "chronos_writer_insert", "chronos_writer_read", "chronos_writer_update",
            "ml_predictions_other_roles",
        ]
    finally:
        _drop_database(server_url, name)


# ---------------------------------------------------------------------------
# model loading


def test_when_a_checkpoint_has_only_pickle_weights_then_it_is_refused_unopened(tmp_path, tiny_checkpoint):
    checkpoint = tmp_path / "pickle-only"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    # Not a real pickle: the loader must refuse on the file type alone, before reading it.
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code if unpickled")

    with pytest.raises(ModelUnavailableError, match=(
        r"has no \.safetensors weights \(only pickle weights: pytorch_model\.bin\); only safetensors checkpoints are loaded"
    )):
        load_chronos2(str(checkpoint))
    assert json.loads((checkpoint / "config.json").read_text())["random_weights"] is True


def test_when_the_server_stops_mid_write_then_after_restart_the_window_is_absent_and_a_rerun_writes_it_once(tmp_path):
    import pgserver

    from forecasting_pipeline.storage.embedded_postgres import ensure_database

    # A server of its own: stopping the session's server would break every other test.
    pgdata = tmp_path / "stopped-pg"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    url = ensure_database(server.get_uri(), "stopped")
    with psycopg.connect(url, autocommit=True) as c:
        migrate(c)
    symbols = [i.symbol for i in load_instruments()]
    rows = window_rows(symbols)
    blocker = psycopg.connect(url)
    blocker.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, model_name, as_of, predictions) VALUES (%s, '1d', 'chronos-2', %s, '[]')",
        (rows[-1].symbol, rows[-1].as_of),
    )
    outcome = []

    def write():
        try:
            with psycopg.connect(url) as writer:
                upsert_window(writer, rows, window=WINDOW)
            outcome.append("written")
        except psycopg.OperationalError:
            # The server's shutdown reaches the writer as an OperationalError (AdminShutdown, or a lost connection).
            outcome.append("connection lost")

    writer_thread = threading.Thread(target=write)
    writer_thread.start()
    with psycopg.connect(url, autocommit=True) as watcher:
        wait_for(lambda: watcher.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO ml_predictions%%'"
        ).fetchone())
    server.cleanup()  # pg_ctl stop: every session is cut off mid-transaction
    writer_thread.join()
    blocker.close()

    server = wait_for(lambda: _restarted(pgserver, pgdata))
    try:
        with psycopg.connect(url, autocommit=True) as c:
            after_restart = chronos_rows(c)
            upsert_window(c, rows, window=WINDOW)
            upsert_window(c, rows, window=WINDOW)
            rerun = chronos_rows(c)
    finally:
        server.cleanup()

    assert outcome == ["connection lost"]
    assert after_restart == []
    assert [s for s, *_ in rerun] == sorted(symbols)
