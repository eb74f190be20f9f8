"""Jobs and schedules: one job per cadence chain, ticking hourly at :55 and daily at 05:45 UTC.

Which window a tick targets is deliberate: the latest *complete* window, so every bar the run
uses has closed. The 10:55 tick forecasts from the window 09:00-10:00 (its last bar closed at
10:00; the 11:00 bar is still open). The 05:45 tick forecasts from the previous UTC day, after
every exchange, FX and crypto daily close of that day.
"""

from __future__ import annotations

import dagster as dg

from forecasting_pipeline.orchestration.cadences import DAILY, HOURLY, Cadence


def chain_job(cadence: Cadence) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=f"chronos2_{cadence.name}_job",
        selection=dg.AssetSelection.groups(f"chronos2_{cadence.name}"),
        partitions_def=cadence.partitions_def,
        description=f"Chronos-2 {cadence.name} chain: OHLCV -> covariates -> forecasts -> ml_predictions.",
    )


# When each cadence's schedules tick (UTC); each tick targets the latest complete window.
TICKS: dict[str, dict[str, int]] = {"1h": dict(minute_of_hour=55), "1d": dict(hour_of_day=5, minute_of_hour=45)}

hourly_job = chain_job(HOURLY)
daily_job = chain_job(DAILY)

hourly_schedule = dg.build_schedule_from_partitioned_job(
    hourly_job, name="chronos2_1h_schedule", default_status=dg.DefaultScheduleStatus.RUNNING, **TICKS["1h"]
)
daily_schedule = dg.build_schedule_from_partitioned_job(
    daily_job, name="chronos2_1d_schedule", default_status=dg.DefaultScheduleStatus.RUNNING, **TICKS["1d"]
)
