"""The hourly ensemble on real EUR/USD: the chain's runs, Kronos's rows, the ensemble's run and the scores, in Dagster.

Hourly EUR/USD (backtesting 0.6.6, real bars on the 24/5 calendar) through the ``files`` source,
Tuesday 6 June 2017 to Friday 9 June noon: the last forecasts' 24-hour horizons cross the weekend.
``chronos-2`` is one real run of the hourly chain over the range on the random-weight tiny
checkpoint (useless); ``kronos-base`` is the skilful stand-in written as Kronos writes its rows
(``conftest.skilful_kronos``). The ensemble, with look backs short enough for three and a half
days, backfills the range in one run, is re-run, and the scoring asset scores every model.
"""

from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.market.cadences import HOURLY
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource, build_ensemble
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource
from forecasting_pipeline.orchestration.scoring_assets import build_scoring
from forecasting_pipeline.scoring.evaluation import losses_realised_by
from forecasting_pipeline.storage.ensemble_weights import read_ensemble_weights
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline_tests.conftest import skilful_kronos, write_kronos_rows
from forecasting_pipeline_tests.test_backfill_real_bars import HOURLY_FIRST_WINDOW, range_run

RANGE = ("2017-06-06-00:00", "2017-06-09-11:00")
SCORED_UNTIL = datetime(2017, 6, 12, 12, tzinfo=timezone.utc)
MEMBERS = ("chronos-2", "kronos-base", "baseline-rw-vol")
WINDOWS = cadence_windows(HOURLY, HOURLY_FIRST_WINDOW)
SMALL_CONTEXT = {"ops": {"ohlcv_1h": {"config": {"history_bars": 256}},
                         "chronos2_forecasts_1h": {"config": {"context_length": 128}}}}
# Look backs for days, not weeks: warm after 24 + 6 hours, the band calibrated and tracking 30 hours later.
SHORT = EnsembleResource(lookback=24, warmup=6, shrinkage=12.0, band_window=12)


@pytest.fixture
def eurusd_resources(real_bars, bar_files, tmp_path, resources):
    bars = real_bars("EURUSD")
    bar_files.write("EURUSD", bars, cadence="1h")
    universe = tmp_path / "instruments.yaml"
    universe.write_text('instruments:\n  - {symbol: EURUSD, asset_class: fx, calendar: "24/5"}\n')
    return bars, {**resources, "instruments": InstrumentsResource(file=str(universe)),
                  "market_data": MarketDataResource(source="files", path=str(bar_files.root)), "ensemble": SHORT}


def ensemble_run(chain, ensemble, resources, instance):
    return dg.materialize(
        [*chain, *ensemble], selection=[ensemble[1].key], resources=resources, instance=instance,
        tags={"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]},
    )


def ensemble_rows(conn) -> pl.DataFrame:
    return read_predictions(conn, "1h", "ensemble").select("symbol", "as_of", "step", "ts", "p10", "p50", "p90")


def test_when_the_hourly_ensemble_runs_on_real_eurusd_then_it_follows_kronos_and_calibrates_its_band_per_horizon_group(
    eurusd_resources, instance, conn, capsys
):
    bars, resources = eurusd_resources
    chain = build_chain(WINDOWS, ["EURUSD"])
    ensemble = build_ensemble(WINDOWS, wait=HOURLY.bar)
    assert range_run(chain, resources, instance, *RANGE, SMALL_CONTEXT).success
    origins = read_predictions(conn, "1h", "chronos-2")["as_of"].unique().sort().to_list()
    write_kronos_rows(conn, skilful_kronos(bars, origins, HOURLY.horizon, timeframe="1h"))

    combined = ensemble_run(chain, ensemble, resources, instance)
    first = ensemble_rows(conn)
    rerun = ensemble_run(chain, ensemble, resources, instance)
    scored = dg.materialize(
        build_scoring(HOURLY), resources=resources, instance=instance,
        run_config={"ops": {"forecast_scores_1h": {"config": {"until": SCORED_UNTIL.isoformat()}}}},
    )

    assert combined.success and rerun.success and scored.success
    rows = ensemble_rows(conn)
    assert rows.equals(first)
    chronos = read_predictions(conn, "1h", "chronos-2").select("as_of", "step", "ts")
    assert rows.height == len(origins) * HOURLY.horizon
    assert rows.select("as_of", "step", "ts").sort("as_of", "step").equals(chronos.sort("as_of", "step"))
    friday = rows.filter(pl.col("as_of") == datetime(2017, 6, 9, 12, tzinfo=timezone.utc)).sort("step")
    # The 24/5 week closes Friday 21:00 UTC and reopens with Sunday 22:00's bar: the horizon skips the weekend.
    assert friday["ts"][9] == datetime(2017, 6, 11, 22, tzinfo=timezone.utc)

    explained = read_ensemble_weights(conn, "1h")
    assert len(explained) == len(origins)
    assert explained[0]["details"]["warm_up"] and not explained[0]["details"]["calibration"]["applied"]
    calibrated = [e for e in explained if e["details"]["calibration"]["applied"]]
    last = explained[-1]["details"]["calibration"]
    assert [g["steps"] for g in last["groups"]] == ["1-2", "3-8", "9-24"]
    assert last["tracked"] > 0 and last["occasions"] > SHORT.warmup
    since = min(e["as_of"] for e in calibrated).astimezone(timezone.utc)
    losses = pl.concat([losses_realised_by(conn, "1h", m, SCORED_UNTIL) for m in ("ensemble", *MEMBERS)])
    figures = losses.filter(pl.col("as_of") >= since).group_by("model_name").agg(
        pl.len().alias("forecasts"), pl.col("scaled_abs_error").mean().alias("scaled_mae"),
        (1 - (pl.col("n_below_p10").sum() + pl.col("n_above_p90").sum()) / pl.col("n_steps").sum()).alias("coverage"),
    )
    figures = {r["model_name"]: r for r in figures.iter_rows(named=True)}
    final = explained[-1]["weights"]
    with capsys.disabled():
        print(f"\nEURUSD hourly, {len(calibrated)} calibrated forecasts from {since}: "
              + ", ".join(f"{m} scaled MAE {r['scaled_mae']:.3f} coverage {r['coverage']:.3f}" for m, r in figures.items())
              + f"; final weights {final}; band {last}")
    assert final["kronos-base"]["location"] > max(final["chronos-2"]["location"], final["baseline-rw-vol"]["location"])
    assert figures["ensemble"]["scaled_mae"] < figures["baseline-rw-vol"]["scaled_mae"]
    assert figures["ensemble"]["forecasts"] == len(calibrated)
