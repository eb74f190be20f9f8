"""The ensemble on real history: a useless Chronos-2 and a skilful Kronos, and the weight moving to the skilful one.

Daily GOOG from July 2011 to June 2012, through the ``files`` source. ``chronos-2`` is the real
pipeline on the random-weight tiny checkpoint (a real run of the chain over the range), so its
forecasts are useless; ``kronos-base`` is a skilful stand-in written as Kronos writes its rows
(``conftest.skilful_kronos``: the realised closes plus noise of half a random walk's error). The
ensemble backfills the range in one run, the scoring asset scores every model, and the test reads
the stored per-forecast losses after the warm-up: out of sample, since each ensemble forecast only
used forecasts realised by its own ``as_of``.
"""

from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource, build_ensemble
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource
from forecasting_pipeline.orchestration.scoring_assets import ENSEMBLE_CHECK, build_scoring
from forecasting_pipeline.scoring.evaluation import losses_realised_by
from forecasting_pipeline.storage.ensemble_weights import read_ensemble_weights
from forecasting_pipeline_tests.conftest import skilful_kronos, write_kronos_rows
from forecasting_pipeline_tests.test_backfill_real_bars import SMALL_CONTEXT, range_run

RANGE = ("2011-07-01", "2012-06-30")
SCORED_UNTIL = datetime(2012, 7, 20, tzinfo=timezone.utc)
MEMBERS = ("chronos-2", "kronos-base", "baseline-rw-vol")
WINDOWS = cadence_windows(DAILY, "2004-01-01", 400)


@pytest.fixture
def goog_resources(real_bars, bar_files, tmp_path, resources):
    bars = real_bars("GOOG")
    bar_files.write("GOOG", bars)
    universe = tmp_path / "instruments.yaml"
    universe.write_text('instruments:\n  - {symbol: GOOG, asset_class: equity, calendar: XNAS}\n')
    return bars, {**resources, "instruments": InstrumentsResource(file=str(universe)),
                  "market_data": MarketDataResource(source="files", path=str(bar_files.root)),
                  "ensemble": EnsembleResource()}


def out_of_sample(conn, first_calibrated: datetime) -> pl.DataFrame:
    """Stored losses of the ensemble and its members on the forecasts all share, from the end of the warm-up."""
    losses = pl.concat([losses_realised_by(conn, "1d", model, SCORED_UNTIL) for model in ("ensemble", *MEMBERS)])
    shared = (losses.filter(pl.col("as_of") >= first_calibrated).group_by("symbol", "as_of").len()
              .filter(pl.col("len") == 4).select("symbol", "as_of"))
    return losses.join(shared, on=["symbol", "as_of"]).group_by("model_name").agg(
        pl.len().alias("forecasts"),
        pl.col("scaled_abs_error").mean().alias("scaled_mae"),
        # Coverage only for banded models: a point forecast (Kronos) has no band to cover.
        pl.when(pl.col("n_below_p10").null_count() == 0).then(
            1 - (pl.col("n_below_p10").sum() + pl.col("n_above_p90").sum()) / pl.col("n_steps").sum()
        ).alias("coverage"),
    ).sort("model_name")


def test_when_a_useless_chronos_meets_a_skilful_kronos_on_real_goog_then_the_ensemble_follows_the_skilful_one(
    goog_resources, instance, conn, capsys
):
    bars, resources = goog_resources
    chain = build_chain(WINDOWS, ["GOOG"])
    ensemble = build_ensemble(WINDOWS, wait=DAILY.bar)
    assert range_run(chain, resources, instance, *RANGE, SMALL_CONTEXT).success
    sessions = bars.filter(pl.col("ts").dt.strftime("%Y-%m-%d").is_between(pl.lit(RANGE[0]), pl.lit(RANGE[1])))["ts"].to_list()
    write_kronos_rows(conn, skilful_kronos(bars, sessions, DAILY.horizon))

    combined = dg.materialize(
        [*chain, *ensemble], selection=[ensemble[1].key], resources=resources, instance=instance,
        tags={"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]},
    )
    scored = dg.materialize(
        build_scoring(DAILY), resources=resources, instance=instance,
        run_config={"ops": {"forecast_scores_1d": {"config": {"until": SCORED_UNTIL.isoformat()}}}},
    )

    assert combined.success and scored.success
    explained = read_ensemble_weights(conn, "1d")
    assert len(explained) == len(sessions)
    first = explained[0]
    assert first["details"]["warm_up"] and all(w["location"] == pytest.approx(1 / 3) for w in first["weights"].values())
    first_calibrated = min(e["as_of"] for e in explained if not e["details"]["warm_up"]).astimezone(timezone.utc)
    figures = {row["model_name"]: row for row in out_of_sample(conn, first_calibrated).iter_rows(named=True)}
    best = min(MEMBERS, key=lambda m: figures[m]["scaled_mae"])
    final = explained[-1]["weights"]
    with capsys.disabled():
        print(f"\nGOOG daily, out of sample from {first_calibrated.date()}: "
              + ", ".join(f"{m} scaled MAE {r['scaled_mae']:.3f} p10-p90 coverage "
                          + (f"{r['coverage']:.3f}" if r["coverage"] is not None else "-")
                          + f" ({r['forecasts']} forecasts)" for m, r in figures.items())
              + f"; final weights {final}")

    assert best == "kronos-base"
    assert figures["ensemble"]["scaled_mae"] <= 1.05 * figures[best]["scaled_mae"]
    assert abs(figures["ensemble"]["coverage"] - 0.8) <= 0.1
    assert final["kronos-base"]["location"] > 0.5 and final["chronos-2"]["location"] < 0.1
    assert final["kronos-base"]["location"] > max(final["chronos-2"]["location"], final["baseline-rw-vol"]["location"])
    assert figures["ensemble"]["forecasts"] > 150
    [canary] = [c for c in scored.get_asset_check_evaluations() if c.check_name == ENSEMBLE_CHECK]
    assert canary.passed and canary.metadata["compared"].value == "ensemble - kronos-base"
