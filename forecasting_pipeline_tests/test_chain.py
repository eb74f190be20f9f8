"""The asset chain end to end: real Dagster materialisations, real PostgreSQL, the real Chronos2Pipeline (tiny)."""

import dagster as dg
import pytest

from forecasting_pipeline.assets import build_chain
from forecasting_pipeline.cadences import DAILY, HOURLY
from forecasting_pipeline.ml_predictions import read_predictions

N_INSTRUMENTS = 23


def _count(conn, model_name="chronos-2", timeframe=None):
    return conn.execute(
        "SELECT count(*) FROM ml_predictions WHERE model_name = %s AND (%s::text IS NULL OR timeframe = %s)",
        (model_name, timeframe, timeframe),
    ).fetchone()[0]


@pytest.mark.parametrize(
    ("cadence", "partition", "horizon"),
    [(DAILY, "2025-06-02", 10), (HOURLY, "2026-03-02-15:00", 24)],
)
def test_when_one_window_is_materialised_then_each_instrument_gets_one_full_forecast_row(
    cadence, partition, horizon, resources, instance, conn
):
    result = dg.materialize(build_chain(cadence), partition_key=partition, resources=resources, instance=instance)

    assert result.success
    stored = read_predictions(conn, cadence.name)
    assert stored["symbol"].n_unique() == N_INSTRUMENTS
    assert len(stored) == N_INSTRUMENTS * horizon
    assert _count(conn, timeframe=cadence.name) == N_INSTRUMENTS
    window_end = cadence.partitions_def.time_window_for_partition_key(partition).end
    assert stored["as_of"].max() <= window_end
    assert (stored["ts"] > stored["as_of"]).all()
    assert ((stored["p10"] <= stored["p50"]) & (stored["p50"] <= stored["p90"])).all()
