"""A window's re-run leaves exactly its own set: real Dagster runs of the chain, the ensemble and the scores.

Bars of the 23 instruments are the sample source's, written as files (the ``files`` source), so
that one bar can be corrupted between the first run of a window and its re-run.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource, ensemble_asset
from forecasting_pipeline.orchestration.resources import MarketDataResource
from forecasting_pipeline.orchestration.scoring_assets import build_scoring
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.serving.gateway import latest_forecasts
from forecasting_pipeline.storage.forecast_scores import read_scores
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

WINDOW = "2025-06-02"
WINDOW_END = datetime(2025, 6, 3, tzinfo=timezone.utc)
# Bars run three weeks past the window, so that its ten-step forecasts can be scored.
BARS_END = WINDOW_END + timedelta(days=21)
SCORED_UNTIL = {"ops": {"forecast_scores_1d": {"config": {"until": BARS_END.isoformat()}}}}


@pytest.fixture
def universe_files(resources, bar_files):
    """The test resources on bar files of all 23 instruments."""
    for instrument in load_instruments():
        bar_files.write(instrument.symbol, sample_bars(instrument, "1d", BARS_END, 260))
    return {**resources, "market_data": MarketDataResource(source="files", path=str(bar_files.root)),
            "ensemble": EnsembleResource()}


def corrupt_last_bar_of_window(bar_files, symbol: str) -> None:
    """The last bar the window reads now has its high below its low, which validation excludes."""
    path = bar_files.root / "1d" / f"{symbol}.parquet"
    bars = pl.read_parquet(path)
    last = bars.filter(pl.col("ts") <= WINDOW_END)["ts"].max()
    bars.with_columns(
        high=pl.when(pl.col("ts") == last).then(pl.col("low") * 0.5).otherwise(pl.col("high"))
    ).write_parquet(path)


def rows_of(conn, model: str) -> list[str]:
    return [s for (s,) in conn.execute(
        "SELECT symbol FROM ml_predictions WHERE model_name = %s AND timeframe = '1d' ORDER BY symbol", (model,))]


def scored_symbols(conn, model: str) -> set[str]:
    return set(read_scores(conn, "1d").filter(pl.col("model_name") == model)["symbol"])


def test_when_a_window_is_rerun_with_one_instruments_bar_corrupted_then_its_row_leaves_everywhere(
    universe_files, bar_files, instance, conn
):
    chain, scoring = build_chain(DAILY_WINDOWS, SYMBOLS), build_scoring(DAILY)
    ensemble = [ensemble_asset(DAILY_WINDOWS, timedelta(minutes=30))]
    # Kronos's row for AAPL, of another origin: never written nor deleted by the pipeline.
    conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1d', '[]'::jsonb)")

    def materialise_all():
        done = [dg.materialize(chain, partition_key=WINDOW, resources=universe_files, instance=instance),
                dg.materialize(ensemble, partition_key=WINDOW, resources=universe_files, instance=instance),
                dg.materialize(scoring, resources=universe_files, instance=instance, run_config=SCORED_UNTIL)]
        assert all(result.success for result in done)

    materialise_all()
    first = (rows_of(conn, "chronos-2"), rows_of(conn, "ensemble"), scored_symbols(conn, "chronos-2"))
    corrupt_last_bar_of_window(bar_files, "AAPL")
    materialise_all()

    assert first == (SYMBOLS_SORTED, SYMBOLS_SORTED, set(SYMBOLS))
    without_aapl = [s for s in SYMBOLS_SORTED if s != "AAPL"]
    assert rows_of(conn, "chronos-2") == without_aapl
    assert rows_of(conn, "ensemble") == without_aapl
    assert [s for (s,) in conn.execute("SELECT symbol FROM ensemble_weights ORDER BY symbol")] == without_aapl
    assert rows_of(conn, "kronos-base") == ["AAPL"]
    assert sorted(f.symbol for f in latest_forecasts(conn, "chronos-2", "1d")) == without_aapl
    assert sorted(f.symbol for f in latest_forecasts(conn, "ensemble", "1d")) == without_aapl
    assert scored_symbols(conn, "chronos-2") == set(without_aapl)
    assert scored_symbols(conn, "ensemble") == set(without_aapl)


SYMBOLS_SORTED = sorted(SYMBOLS)
