"""The ensemble in Dagster: Kronos's rows observed by a sensor, and declarative automation that waits for both producers.

Real runs of the hourly chain (sample bars, tiny checkpoint) for the latest complete window, the
Kronos sensor evaluated against the real database (its events recorded on the instance as the
sensor daemon records them), and Dagster's own automation evaluator deciding when the ensemble runs.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.sources.sample import SampleSource
from forecasting_pipeline.orchestration.assembly import build_definitions
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource, build_ensemble, kronos_sensor
from forecasting_pipeline.orchestration.resources import InstrumentsResource
from forecasting_pipeline.settings import Settings
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline_tests.conftest import HOURLY_WINDOWS, write_kronos_rows

SYMBOL = "BTC-USD"  # 24/7: the hourly window's as_of is its end
SMALL = {"ops": {"ohlcv_1h": {"config": {"history_bars": 256}}, "chronos2_forecasts_1h": {"config": {"context_length": 256}}}}
ENSEMBLE_KEY = dg.AssetKey("ensemble_forecasts_1h")


def latest_window() -> str:
    with dg.partition_loading_context(effective_dt=datetime.now(timezone.utc)):
        return HOURLY_WINDOWS.partitions_def.get_last_partition_key()


@pytest.fixture
def hourly(resources):
    def build(wait_minutes: float):
        resources_ = {**resources, "instruments": InstrumentsResource(symbols=[SYMBOL]),
                      "ensemble": EnsembleResource(kronos_wait_minutes=wait_minutes)}
        chain = build_chain(HOURLY_WINDOWS, [SYMBOL])
        ensemble = build_ensemble(HOURLY_WINDOWS, timedelta(minutes=wait_minutes))
        defs = dg.Definitions(assets=[*chain, *ensemble], sensors=[kronos_sensor(HOURLY_WINDOWS)], resources=resources_)
        return defs, chain, resources_
    return build


def tick_sensor(defs: dg.Definitions, instance, cursor=None) -> dg.SensorResult:
    """One evaluation of the Kronos sensor; its events recorded on the instance, as the sensor daemon does."""
    sensor = defs.get_sensor_def("kronos_base_1h_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def requested(result) -> list[str]:
    return sorted(result.get_requested_partitions(ENSEMBLE_KEY))


def write_kronos_for(conn, window: str) -> None:
    as_of = HOURLY_WINDOWS.end_of(window)
    closes = SampleSource().bars(load_instruments(), "1h", as_of, 1)[0].filter(pl.col("symbol") == SYMBOL)["close"]
    steps = [(as_of + timedelta(hours=h), closes[0] * (1 + 0.001 * h)) for h in range(1, 25)]
    write_kronos_rows(conn, [(SYMBOL, "1h", as_of + timedelta(minutes=5), steps)])


def test_when_the_chain_is_in_then_the_ensemble_waits_for_kronos_and_runs_once_the_sensor_sees_it(hourly, instance, conn):
    defs, chain, resources = hourly(wait_minutes=30)
    window = latest_window()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert dg.materialize(chain, partition_key=window, resources=resources, instance=instance, run_config=SMALL).success

    waiting = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    nothing_yet = tick_sensor(defs, instance)
    write_kronos_for(conn, window)
    seen = tick_sensor(defs, instance, nothing_yet.cursor)
    ready = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=waiting.cursor)

    assert requested(waiting) == [] and nothing_yet.asset_events == []
    [observation] = seen.asset_events
    assert observation.partition == window and observation.metadata["instruments_written"].value == 1
    assert requested(ready) == [window]
    assert tick_sensor(defs, instance, seen.cursor).asset_events == []  # observed once per window
    run = dg.materialize([*chain, *build_ensemble(HOURLY_WINDOWS, timedelta(minutes=30))], selection=[ENSEMBLE_KEY],
                         partition_key=window, resources=resources, instance=instance)
    assert run.success
    [materialisation] = run.get_asset_materialization_events()
    assert materialisation.materialization.metadata["without_kronos"].value == 0
    stored = read_predictions(conn, "1h", "ensemble")
    assert stored["symbol"].unique().to_list() == [SYMBOL] and stored.height == 24


def test_when_kronos_has_not_written_within_the_wait_then_the_ensemble_runs_without_it_and_says_so(
    hourly, instance, conn
):
    defs, chain, resources = hourly(wait_minutes=0)
    window = latest_window()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert dg.materialize(chain, partition_key=window, resources=resources, instance=instance, run_config=SMALL).success

    late = tick_sensor(defs, instance)
    ready = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    run = dg.materialize([*chain, *build_ensemble(HOURLY_WINDOWS, timedelta(0))], selection=[ENSEMBLE_KEY],
                         partition_key=window, resources=resources, instance=instance)

    [observation] = late.asset_events
    assert observation.metadata["instruments_written"].value == 0
    assert observation.metadata["status"].value.startswith("waited 0:00:00 after the chain; Kronos has forecast 0 of 1")
    assert requested(ready) == [window]
    assert run.success
    [materialisation] = run.get_asset_materialization_events()
    metadata = materialisation.materialization.metadata
    assert metadata["without_kronos"].value == 1
    assert "kronos-base" in metadata["combined_without"].value[SYMBOL]
    warnings = [r.user_message for r in instance.all_logs(run.run_id) if r.level == 30]
    assert any(f"{SYMBOL} combined without kronos-base: no kronos-base row written within 1 hour" in w for w in warnings)

    # Kronos's row arrives late, still within a bar of as_of: a new data version, and the window combines again.
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=ready.cursor)
    write_kronos_for(conn, window)
    arrived = tick_sensor(defs, instance, late.cursor)
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    rerun = dg.materialize([*chain, *build_ensemble(HOURLY_WINDOWS, timedelta(0))], selection=[ENSEMBLE_KEY],
                           partition_key=window, resources=resources, instance=instance)

    [newer] = arrived.asset_events
    assert newer.metadata["instruments_written"].value == 1 and newer.tags != observation.tags
    assert requested(settled) == [] and requested(again) == [window]
    [materialisation] = rerun.get_asset_materialization_events()
    assert materialisation.materialization.metadata["without_kronos"].value == 0


def test_when_definitions_load_then_both_producers_feed_the_ensemble_outside_the_gpu_pool():
    graph = build_definitions(Settings.from_env({"KRONOS_BATCH_URL": "http://127.0.0.1:9/batch"})).resolve_asset_graph()

    for cadence in ("1h", "1d"):
        ensemble = graph.get(dg.AssetKey(f"ensemble_forecasts_{cadence}"))
        kronos = graph.get(dg.AssetKey(f"kronos_base_{cadence}"))
        assert ensemble.parent_keys == {dg.AssetKey(f"ml_predictions_{cadence}"), kronos.key}
        assert not kronos.is_materializable and kronos.parent_keys == {dg.AssetKey(f"kronos_predictions_{cadence}")}
        assert ensemble.pools in (None, set()) and ensemble.automation_condition is not None
        assert ensemble.key in graph.get(dg.AssetKey(f"forecast_scores_{cadence}")).parent_keys
