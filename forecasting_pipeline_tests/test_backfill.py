"""Backfills: run shape through Dagster's own backfill machinery, one model load per run, progress, point-in-time identity."""

import logging
import sys
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration

import forecasting_pipeline.forecasting.runner as runner_module
from forecasting_pipeline.cli import print_backfill_summary
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.calendars import bar_closes
from forecasting_pipeline.orchestration.backfills import runs_for, submit_chain_backfill
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS

CODE_LOCATION_MODULE = "forecasting_pipeline_tests.backfill_code_location"
INSTRUMENTS_YAML = """instruments:
  - {symbol: BTC-USD, asset_class: crypto, calendar: "24/7"}
  - {symbol: AAPL, asset_class: equity, calendar: XNAS}
"""


@pytest.fixture
def daemon_instance():
    """An instance whose runs start at once and run in this process, as the backfill daemon would launch them."""
    overrides = {
        "run_launcher": {"module": "dagster._core.launcher.sync_in_memory_run_launcher", "class": "SyncInMemoryRunLauncher"},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture
def load_counter(monkeypatch):
    """Counts real checkpoint loads, starting from an empty per-process model cache."""
    calls = []
    real = runner_module.load_chronos2

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "_MODEL_CACHE", {})
    monkeypatch.setattr(runner_module, "load_chronos2", counting)
    return calls


@pytest.fixture
def location_defs(database_url, tiny_checkpoint, tmp_path, monkeypatch):
    """The definitions of the test code location, on this database, two instruments and the tiny checkpoint."""
    instruments_file = tmp_path / "instruments.yaml"
    instruments_file.write_text(INSTRUMENTS_YAML)
    for name, value in {"DATABASE_URL": database_url, "INSTRUMENTS_FILE": str(instruments_file),
                        "CHRONOS2_MODEL": str(tiny_checkpoint), "FRAMES_DIR": str(tmp_path / "frames")}.items():
        monkeypatch.setenv(name, value)
    from forecasting_pipeline_tests.backfill_code_location import defs

    return defs


def run_backfill_daemon(instance: dg.DagsterInstance, backfill_id: str, iterations: int = 5) -> None:
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION_MODULE,
                             working_directory=str(Path(__file__).resolve().parents[1])),
        location_name="backfill_test",
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        for _ in range(iterations):
            list(execute_backfill_iteration(workspace, logging.getLogger("backfill_test")))
            if instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED:
                return


def test_when_ten_daily_windows_are_backfilled_then_one_run_with_one_model_load_covers_them(
    daemon_instance, load_counter, location_defs, conn
):
    backfill_id = submit_chain_backfill(
        daemon_instance, location_defs.resolve_asset_graph(), DAILY_WINDOWS, "2025-06-02", "2025-06-11",
        run_config={"ops": {"ohlcv_1d": {"config": {"history_bars": 256}}}},
    )
    run_backfill_daemon(daemon_instance, backfill_id)

    assert daemon_instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
    runs = daemon_instance.get_runs()
    assert len(runs) == 1 == runs_for(DAILY_WINDOWS, 10)
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert (runs[0].tags["dagster/asset_partition_range_start"], runs[0].tags["dagster/asset_partition_range_end"]) == (
        "2025-06-02", "2025-06-11")
    assert len(load_counter) == 1
    # BTC-USD closes in every window; AAPL in the 8 weekday windows (its weekend windows re-use Friday's as_of).
    stored = read_predictions(conn, "1d")
    assert stored.select("symbol", "as_of").unique().height == 10 + 8
    # Progress: one materialization per stored window, once the run's rows commit, counting up to the total.
    written = [
        r.asset_materialization
        for r in daemon_instance.fetch_materializations(dg.AssetKey("ml_predictions_1d"), limit=100).records
    ]
    progress = sorted((m.metadata["windows_done"].value, m.metadata["windows_total"].value, m.partition) for m in written)
    assert progress == [(i, 10, f"2025-06-{i + 1:02d}") for i in range(1, 11)]


def test_when_the_ensemble_is_backfilled_with_the_chain_then_each_window_is_combined_after_its_chain_window(
    daemon_instance, database_url, tiny_checkpoint, tmp_path, monkeypatch, conn
):
    instruments_file = tmp_path / "instruments.yaml"
    instruments_file.write_text(INSTRUMENTS_YAML)
    for name, value in {"DATABASE_URL": database_url, "INSTRUMENTS_FILE": str(instruments_file),
                        "CHRONOS2_MODEL": str(tiny_checkpoint), "FRAMES_DIR": str(tmp_path / "frames")}.items():
        monkeypatch.setenv(name, value)
    from forecasting_pipeline_tests.backfill_code_location import defs

    backfill_id = submit_chain_backfill(
        daemon_instance, defs.resolve_asset_graph(), DAILY_WINDOWS, "2025-06-02", "2025-06-04", with_ensemble=True,
    )
    run_backfill_daemon(daemon_instance, backfill_id, iterations=10)

    assert daemon_instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
    runs = sorted(daemon_instance.get_runs(), key=lambda r: daemon_instance.get_run_record_by_id(r.run_id).create_timestamp)
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert runs[-1].asset_selection == {dg.AssetKey("ensemble_forecasts_1d")}
    combined = {r.partition_key for r in daemon_instance.fetch_materializations(
        dg.AssetKey("ensemble_forecasts_1d"), limit=10).records}
    assert combined == {"2025-06-02", "2025-06-03", "2025-06-04"}
    # Each instrument's forecast of each window, combined from Chronos-2 and the volatility band (no Kronos here).
    assert read_predictions(conn, "1d", "ensemble").select("symbol", "as_of").unique().height == 6


def backfill_daily(instance: dg.DagsterInstance, defs: dg.Definitions, start: str, end: str) -> str:
    """Submit a backfill of the daily chain over ``start``..``end`` (256 bars of history) and run it; its id."""
    backfill_id = submit_chain_backfill(
        instance, defs.resolve_asset_graph(), DAILY_WINDOWS, start, end,
        run_config={"ops": {"ohlcv_1d": {"config": {"history_bars": 256}}}},
    )
    run_backfill_daemon(instance, backfill_id)
    return backfill_id


def test_when_a_backfill_has_run_then_its_summary_is_printed_and_recorded(
    daemon_instance, location_defs, capsys
):
    backfill_id = backfill_daily(daemon_instance, location_defs, "2025-06-02", "2025-06-04")

    assert print_backfill_summary(daemon_instance, backfill_id, timeout_s=60) == 0
    printed = capsys.readouterr().out
    assert "3 1d windows requested (2025-06-02 .. 2025-06-04), 3 written, 0 not written; 1 run(s): success 1" in printed
    [recorded] = [r.asset_observation for r in daemon_instance.fetch_observations(
        dg.AssetKey("ml_predictions_1d"), limit=10).records if "backfill" in r.asset_observation.metadata]
    assert recorded.metadata["backfill"].value == backfill_id
    assert recorded.metadata["windows_written"].value == 3


# ---------------------------------------------------------------------------
# Point-in-time identity with the files source
# ---------------------------------------------------------------------------

WINDOW = "2025-06-02"
WINDOW_END = datetime(2025, 6, 3, tzinfo=timezone.utc)
SYMBOLS = {"BTC-USD": "24/7", "AAPL": "XNAS"}


def write_random_walk_bars(root: Path, start: datetime, end: datetime) -> None:
    """Bars on each symbol's calendar with closes closing in (start, end]; appended to what the file holds."""
    for symbol, calendar in SYMBOLS.items():
        closes_at = bar_closes(calendar, "1d", start, end)
        rng = np.random.default_rng(zlib.crc32(f"{symbol} {start.isoformat()}".encode()))
        path = root / "1d" / f"{symbol}.parquet"
        previous = pl.read_parquet(path) if path.exists() else None
        level = previous["close"][-1] if previous is not None else 100.0
        close = level * np.exp(np.cumsum(rng.normal(0, 0.02, len(closes_at))))
        new = pl.DataFrame({
            "ts": closes_at, "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
            "volume": rng.uniform(1e5, 2e5, len(closes_at)),
        }).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
        path.parent.mkdir(parents=True, exist_ok=True)
        (pl.concat([previous, new]) if previous is not None else new).write_parquet(path)


def test_when_future_bars_reach_the_source_then_a_rerun_window_stores_identical_forecasts(
    resources, instance, conn, tmp_path
):
    bars = tmp_path / "bars"
    write_random_walk_bars(bars, WINDOW_END - timedelta(days=400), WINDOW_END)
    point_in_time = {
        **resources,
        "instruments": InstrumentsResource(symbols=list(SYMBOLS)),
        "market_data": MarketDataResource(source="files", path=str(bars)),
    }
    first_run = dg.materialize(build_chain(DAILY_WINDOWS, list(SYMBOLS)), partition_key=WINDOW, resources=point_in_time, instance=instance)
    first = read_predictions(conn, "1d").drop("created_at")

    # A month of bars after the window's end arrives; then the window is run again.
    write_random_walk_bars(bars, WINDOW_END, WINDOW_END + timedelta(days=30))
    second_run = dg.materialize(build_chain(DAILY_WINDOWS, list(SYMBOLS)), partition_key=WINDOW, resources=point_in_time, instance=instance)
    second = read_predictions(conn, "1d").drop("created_at")

    assert first_run.success and second_run.success
    assert first.height == 2 * DAILY.horizon
    assert first["as_of"].max() <= WINDOW_END
    assert second.equals(first)  # same as_of, steps, p10, p50 and p90
    assert conn.execute("SELECT count(*) FROM ml_predictions").fetchone()[0] == 2  # replaced, not added


def test_when_a_backfill_step_fails_then_the_summary_gives_the_step_and_its_error(
    daemon_instance, location_defs, tmp_path, monkeypatch, capsys
):
    missing = tmp_path / "no-such-checkpoint"
    monkeypatch.setenv("CHRONOS2_MODEL", str(missing))
    backfill_id = backfill_daily(daemon_instance, location_defs, "2025-06-02", "2025-06-02")

    assert print_backfill_summary(daemon_instance, backfill_id, timeout_s=60) == 1
    printed = capsys.readouterr().out
    [run] = daemon_instance.get_runs()
    assert (f"  2025-06-02: run {run.run_id} failed: step chronos2_forecasts_1d: "
            f"forecasting_pipeline.forecasting.model.ModelUnavailableError: CHRONOS2_MODEL='{missing}' "
            "looks like a path but is not a directory") in printed
    assert "    re-run: forecasting-pipeline run --cadence 1d --partition 2025-06-02" in printed


def test_when_a_failed_backfill_run_is_re_executed_from_failure_then_it_reads_the_frames_it_left_and_releases_them(
    daemon_instance, location_defs, tiny_checkpoint, tmp_path, monkeypatch, conn
):
    monkeypatch.setenv("CHRONOS2_MODEL", str(tmp_path / "no-such-checkpoint"))
    backfill_daily(daemon_instance, location_defs, "2025-06-02", "2025-06-04")
    [failed] = daemon_instance.get_runs()
    frames = tmp_path / "frames"
    left = sorted(str(p.relative_to(frames)) for p in frames.rglob("*") if p.is_file())
    # The steps before the model's left one shared file and its layout each, for the three windows.
    assert [p.split("/")[0] for p in left] == ["covariates_1d"] * 2 + ["ohlcv_1d"] * 2

    monkeypatch.setenv("CHRONOS2_MODEL", str(tiny_checkpoint))
    repository = ReconstructableRepository.for_module(
        CODE_LOCATION_MODULE, "defs", working_directory=str(Path(__file__).resolve().parents[1]))
    # As the UI re-executes a run: its config and its windows (the range tags) go with it.
    result = dg.execute_job(
        repository.get_reconstructable_job(failed.job_name), daemon_instance, run_config=failed.run_config,
        tags={k: v for k, v in failed.tags.items() if k.startswith("dagster/asset_partition_range")},
        reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, daemon_instance),
    )

    assert result.success
    assert result.dagster_run.parent_run_id == failed.run_id
    assert "ohlcv_1d" not in {e.step_key for e in result.all_events if e.is_step_start}
    # Both instruments in each of the three weekday windows.
    assert read_predictions(conn, "1d").select("symbol", "as_of").unique().height == 2 * 3
    assert [p for p in frames.rglob("*") if p.is_file()] == []
