"""Jobs and schedules: one job per cadence chain, ticking hourly at :55 and daily at 05:45 UTC.

Which window a tick targets is deliberate: the latest *complete* window, so every bar the run
uses has closed. The 10:55 tick forecasts from the window 09:00-10:00 (its last bar closed at
10:00; the 11:00 bar is still open). The 05:45 tick forecasts from the previous UTC day, after
every exchange, FX and crypto daily close of that day.
"""

from __future__ import annotations

import dagster as dg

from forecasting_pipeline.orchestration.partitions import Windows

# When each cadence's schedules tick (UTC); each tick targets the latest complete window.
TICKS: dict[str, dict[str, int]] = {"1h": dict(minute_of_hour=55), "1d": dict(hour_of_day=5, minute_of_hour=45)}


def chain_group(windows: Windows) -> str:
    """The asset group (and job prefix) of one cadence's forecast chain."""
    return f"chronos2_{windows.cadence.name}"


def chain_job(windows: Windows) -> dg.UnresolvedAssetJobDefinition:
    name = windows.cadence.name
    return dg.define_asset_job(
        name=f"{chain_group(windows)}_job",
        selection=dg.AssetSelection.groups(chain_group(windows)),
        partitions_def=windows.partitions_def,
        description=f"Chronos-2 {name} chain: OHLCV -> covariates -> forecasts -> ml_predictions.",
    )


def chain_schedule(windows: Windows, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    return dg.build_schedule_from_partitioned_job(
        job, name=f"{chain_group(windows)}_schedule", default_status=dg.DefaultScheduleStatus.RUNNING,
        **TICKS[windows.cadence.name],
    )
