"""Backfills over real market history: a window with nothing to forecast never costs the other windows.

The bars are real: daily GOOG (2004-2013) and hourly EUR/USD (2017-2018) as the `backtesting`
package ships them, read through the `files` source. A vendor gap is made by leaving one bar out
of the file, as real feeds do; the calendar still expects that close, so the window that ends
with it has nothing to forecast.
"""

import logging
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from forecasting_pipeline.market.cadences import DAILY, HOURLY
from forecasting_pipeline.orchestration.backfill_summary import summarise_runs
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import Chronos2Resource, InstrumentsResource, MarketDataResource
from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline_tests.test_reliability import user_error

DAILY_FIRST_WINDOW = "2004-01-01"  # the history predates the default first daily window
DAILY_RANGE = ("2012-10-22", "2012-11-16")  # holds Hurricane Sandy's closure (29-30 October)
MISSING_SESSION = "2012-11-07"
HOURLY_FIRST_WINDOW = "2017-01-01-00:00"  # long before the default first hourly window
HOURLY_RANGE = ("2017-06-07-00:00", "2017-06-07-23:00")
MISSING_HOUR = "2017-06-07-10:00"  # the window that ends when the missing bar should have closed
REPO = Path(__file__).resolve().parents[1]
SMALL_CONTEXT = {"ops": {"ohlcv_1d": {"config": {"history_bars": 256}},
                         "chronos2_forecasts_1d": {"config": {"context_length": 256}}}}


def range_run(assets, resources, instance, first, last, run_config=None):
    return dg.materialize(
        assets, resources=resources, instance=instance, raise_on_error=False, run_config=run_config,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )


def written_partitions(instance, asset: str) -> set[str]:
    return {r.asset_materialization.partition
            for r in instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records}


@pytest.fixture
def goog(real_bars, bar_files, tmp_path, resources):
    """GOOG's real daily bars, one session left out, as the files source reads them."""
    bars = real_bars("GOOG")
    bar_files.write("GOOG", bars.filter(pl.col("ts").dt.strftime("%Y-%m-%d") != MISSING_SESSION))
    universe = tmp_path / "instruments.yaml"
    universe.write_text('instruments:\n  - {symbol: GOOG, asset_class: equity, calendar: XNAS}\n')
    return bars, {**resources, "instruments": InstrumentsResource(file=str(universe)),
                  "market_data": MarketDataResource(source="files", path=str(bar_files.root))}


def test_when_a_daily_backfill_holds_a_session_every_instrument_lacks_then_every_other_window_is_written(
    goog, instance, conn
):
    windows = cadence_windows(DAILY, DAILY_FIRST_WINDOW)
    keys = windows.partitions_def.get_partition_keys()
    requested = keys[keys.index(DAILY_RANGE[0]): keys.index(DAILY_RANGE[1]) + 1]
    _, resources = goog

    result = range_run(build_chain(windows, ["GOOG"]), resources, instance, *DAILY_RANGE, SMALL_CONTEXT)

    assert result.success
    # Every window but the one whose close is missing has its forecast; Sandy's two closed days
    # forecast from the Friday before, as the calendar says, and are no gap.
    assert written_partitions(instance, "ml_predictions_1d") == set(requested) - {MISSING_SESSION}
    stored = read_predictions(conn, "1d")
    sessions = {d.strftime("%Y-%m-%d") for d in stored["as_of"].unique()}
    assert MISSING_SESSION not in sessions and {"2012-10-26", "2012-10-31", "2012-11-08"} <= sessions
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "every_window_written"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    [(window, reason)] = check.metadata["windows_with_nothing_to_forecast"].value.items()
    assert window == MISSING_SESSION and "GOOG: stale: last bar closed at 2012-11-06T21:00:00+00:00" in reason
    errors = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.ERROR]
    assert any(m.startswith(f"window {MISSING_SESSION}: every instrument (1) was excluded") for m in errors)

    summary = summarise_runs(instance, [result.dagster_run], "1d", requested)
    assert summary.not_written == [MISSING_SESSION]
    assert summary.instrument_windows_excluded() == {"stale": 1}
    assert f"forecasting-pipeline run --cadence 1d --partition {MISSING_SESSION}" in summary.text()


def test_when_the_empty_window_is_rerun_alone_then_it_fails_the_same_way_until_the_bar_arrives(
    goog, real_bars, bar_files, instance, conn
):
    windows = cadence_windows(DAILY, DAILY_FIRST_WINDOW)
    bars, resources = goog
    chain = build_chain(windows, ["GOOG"])
    backfill = range_run(chain, resources, instance, *DAILY_RANGE, SMALL_CONTEXT)
    in_backfill = backfill.get_asset_check_evaluations()

    alone = dg.materialize(chain, partition_key=MISSING_SESSION, resources=resources, instance=instance,
                           raise_on_error=False, run_config=SMALL_CONTEXT)

    # A scheduled run of that window alone fails, so alerts fire, and excludes GOOG for the same reason.
    assert not alone.success
    [check] = [c for c in in_backfill if c.check_name == "every_window_written"]
    reason_in_backfill = check.metadata["windows_with_nothing_to_forecast"].value[MISSING_SESSION]
    assert user_error(alone, "ohlcv_1d").endswith(reason_in_backfill + "\n")
    [excluded] = [c for c in alone.get_asset_check_evaluations() if c.check_name == "bars_valid_GOOG"]
    assert excluded.metadata["excluded_windows"].value == [MISSING_SESSION]
    assert MISSING_SESSION not in written_partitions(instance, "ml_predictions_1d")

    bar_files.write("GOOG", bars)  # the vendor delivers the missing session
    fixed = dg.materialize(chain, partition_key=MISSING_SESSION, resources=resources, instance=instance,
                           run_config=SMALL_CONTEXT)

    assert fixed.success
    assert MISSING_SESSION in written_partitions(instance, "ml_predictions_1d")
    sessions = {d.strftime("%Y-%m-%d") for d in read_predictions(conn, "1d")["as_of"].unique()}
    assert MISSING_SESSION in sessions


def test_when_hourly_history_predates_the_default_first_window_then_a_setting_opens_it_to_backfills(
    real_bars, bar_files, tmp_path, resources, instance, conn
):
    bars = real_bars("EURUSD")
    missing_close = cadence_windows(HOURLY).partitions_def.time_window_for_partition_key("2026-01-01-00:00")
    bar_files.write("EURUSD", bars.filter(pl.col("ts") != pl.datetime(2017, 6, 7, 11, time_zone="UTC")), cadence="1h")
    universe = tmp_path / "instruments.yaml"
    universe.write_text('instruments:\n  - {symbol: EURUSD, asset_class: fx, calendar: "24/5"}\n')
    resources = {**resources, "instruments": InstrumentsResource(file=str(universe)),
                 "market_data": MarketDataResource(source="files", path=str(bar_files.root))}
    windows = cadence_windows(HOURLY, HOURLY_FIRST_WINDOW)
    small = {"ops": {"ohlcv_1h": {"config": {"history_bars": 256}},
                     "chronos2_forecasts_1h": {"config": {"context_length": 256}}}}

    result = range_run(build_chain(windows, ["EURUSD"]), resources, instance, *HOURLY_RANGE, small)

    assert result.success
    hours = [f"2017-06-07-{h:02d}:00" for h in range(24)]
    assert written_partitions(instance, "ml_predictions_1h") == set(hours) - {MISSING_HOUR}
    assert read_predictions(conn, "1h").select("as_of").n_unique() == 23
    # Moving the first window back keeps every key of the default partitions valid.
    assert windows.partitions_def.has_partition_key(missing_close.start.strftime("%Y-%m-%d-%H:%M"))
    assert not cadence_windows(HOURLY).partitions_def.has_partition_key(HOURLY_RANGE[0])


def test_when_runs_are_stored_in_postgres_then_partition_status_shows_written_missing_and_failed_windows(
    goog, database_url, tmp_path, monkeypatch
):
    # The project's own instance: dagster.yaml's PostgreSQL storages, with events written in batches.
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(database_url))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    windows = cadence_windows(DAILY, DAILY_FIRST_WINDOW)
    _, resources = goog
    key = dg.AssetKey("ml_predictions_1d")
    around_gap = ("2012-11-06", "2012-11-08")
    later = ("2012-11-12", "2012-11-14")
    broken = {**resources, "chronos2": Chronos2Resource(model=str(tmp_path / "no-such-checkpoint"))}

    with dg.DagsterInstance.from_config(str(home)) as instance:
        written = range_run(build_chain(windows, ["GOOG"]), resources, instance, *around_gap, SMALL_CONTEXT)
        failed = range_run(build_chain(windows, ["GOOG"]), broken, instance, *later, SMALL_CONTEXT)
        status = instance.get_status_by_partition(
            key, ["2012-11-06", "2012-11-07", "2012-11-08", "2012-11-12", "2012-11-13", "2012-11-14"],
            windows.partitions_def,
        )
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key, "every_window_written"), limit=100)

    assert written.success and not failed.success
    materialized, failure = dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.FAILED
    assert status == {"2012-11-06": materialized, "2012-11-07": None, "2012-11-08": materialized,
                      "2012-11-12": failure, "2012-11-13": failure, "2012-11-14": failure}
    # The check is planned for each window of each run; a range run's result is the run's (no window).
    planned = {(c.run_id, c.partition) for c in checks if c.status == AssetCheckExecutionRecordStatus.PLANNED}
    assert planned == {(run.run_id, window) for run, keys in ((written, around_gap), (failed, later))
                       for window in windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(*keys))}
    assert [(c.partition, c.status) for c in checks if c.run_id == written.run_id and c.partition is None] == [
        (None, AssetCheckExecutionRecordStatus.FAILED)]
