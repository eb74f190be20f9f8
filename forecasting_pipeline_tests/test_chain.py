"""The asset chain end to end: real Dagster materialisations, real PostgreSQL, the real Chronos2Pipeline (tiny)."""

import dagster as dg
import pytest

from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, HOURLY_WINDOWS, SYMBOLS

N_INSTRUMENTS = 23


def _count(conn, model_name="chronos-2", timeframe=None):
    return conn.execute(
        "SELECT count(*) FROM ml_predictions WHERE model_name = %s AND (%s::text IS NULL OR timeframe = %s)",
        (model_name, timeframe, timeframe),
    ).fetchone()[0]


@pytest.mark.parametrize(
    ("windows", "partition", "horizon"),
    [(DAILY_WINDOWS, "2025-06-02", 10), (HOURLY_WINDOWS, "2026-03-02-15:00", 24)],
)
def test_when_one_window_is_materialised_then_each_instrument_gets_one_full_forecast_row(
    windows, partition, horizon, resources, instance, conn
):
    cadence = windows.cadence
    result = dg.materialize(build_chain(windows, SYMBOLS), partition_key=partition, resources=resources, instance=instance)

    assert result.success
    stored = read_predictions(conn, cadence.name)
    assert stored["symbol"].n_unique() == N_INSTRUMENTS
    assert len(stored) == N_INSTRUMENTS * horizon
    assert _count(conn, timeframe=cadence.name) == N_INSTRUMENTS
    window_end = windows.end_of(partition)
    assert stored["as_of"].max() <= window_end
    assert (stored["ts"] > stored["as_of"]).all()
    assert ((stored["p10"] <= stored["p50"]) & (stored["p50"] <= stored["p90"])).all()


def test_when_a_range_of_windows_runs_then_every_window_gets_its_rows_in_one_run(resources, instance, conn):
    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS),
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": "2025-06-02", "dagster/asset_partition_range_end": "2025-06-04"},
    )

    assert result.success
    stored = read_predictions(conn, "1d")
    # Crypto has a new daily close in each of the 3 windows; the other 18 instruments too (Mon-Wed).
    assert stored.select("symbol", "as_of").unique().height == 3 * N_INSTRUMENTS
    written = result.asset_materializations_for_node("ml_predictions_1d")
    assert sorted((m.partition, m.metadata["rows"].value) for m in written) == [
        ("2025-06-02", N_INSTRUMENTS), ("2025-06-03", N_INSTRUMENTS), ("2025-06-04", N_INSTRUMENTS)]
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_window_written"]
    assert check.passed and check.metadata["windows_written"].value == 3


def test_when_a_window_is_run_twice_then_its_rows_are_replaced_not_duplicated(resources, instance, conn):
    dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)
    first = read_predictions(conn, "1d").drop("created_at")

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)

    assert result.success
    assert _count(conn, timeframe="1d") == N_INSTRUMENTS
    assert read_predictions(conn, "1d").drop("created_at").equals(first)


def test_when_kronos_rows_exist_then_migrations_and_runs_leave_them_unchanged(resources, instance, conn):
    conn.execute(
        """
        INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at)
        SELECT s, tf, jsonb_build_array(jsonb_build_object('ts', '2025-06-03T21:00:00+00:00', 'close', 101.5)),
               '2025-06-02 22:00+00'
        FROM unnest(ARRAY['AAPL', 'BTC-USD', 'EURUSD']) s, unnest(ARRAY['1h', '1d']) tf
        """
    )
    before = conn.execute(
        "SELECT id, symbol, timeframe, model_name, model_version, as_of, created_at, predictions "
        "FROM ml_predictions ORDER BY id"
    ).fetchall()

    dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)
    dg.materialize(build_chain(HOURLY_WINDOWS, SYMBOLS), partition_key="2026-03-02-15:00", resources=resources, instance=instance)

    after = conn.execute(
        "SELECT id, symbol, timeframe, model_name, model_version, as_of, created_at, predictions "
        "FROM ml_predictions WHERE model_name = 'kronos-base' ORDER BY id"
    ).fetchall()
    assert after == before
    assert {row[3] for row in before} == {"kronos-base"}
    assert _count(conn) == 2 * N_INSTRUMENTS


def test_when_a_window_forecasts_then_steps_follow_each_instruments_trading_calendar(resources, instance, conn):
    # Friday 2025-06-06: the next daily closes skip the weekend for equities and FX, not for crypto.
    dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-06", resources=resources, instance=instance)
    stored = read_predictions(conn, "1d", symbols=["AAPL", "BTC-USD", "EURUSD"])

    def first_steps(symbol):
        return [t.isoformat() for t in stored.filter(symbol=symbol).sort("step")["ts"].head(2)]

    assert first_steps("AAPL") == ["2025-06-09T20:00:00+00:00", "2025-06-10T20:00:00+00:00"]
    assert first_steps("BTC-USD") == ["2025-06-08T00:00:00+00:00", "2025-06-09T00:00:00+00:00"]
    assert first_steps("EURUSD") == ["2025-06-09T21:00:00+00:00", "2025-06-10T21:00:00+00:00"]
