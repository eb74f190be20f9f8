"""How each cadence is cut into Dagster partitions: the windows its assets are materialised for.

A window holds every instrument: one run and one batched model call serve a whole window, and a
backfill run covers ``per_backfill_run`` windows with one model load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from forecasting_pipeline.market.cadences import CADENCES, DAILY, HOURLY, Cadence

# The first window of each cadence unless the settings name an earlier (or later) one. Keys keep
# their format whatever the start, so existing partitions stay valid when the start moves back.
DEFAULT_FIRST_WINDOW: dict[str, str] = {name: c.first_window for name, c in CADENCES.items()}

# Windows per backfill run unless the settings say otherwise (the cadence's reasoning).
DEFAULT_WINDOWS_PER_BACKFILL_RUN: dict[str, int] = {name: c.windows_per_backfill_run for name, c in CADENCES.items()}


@dataclass(frozen=True)
class Windows:
    """A cadence's windows: its Dagster partitions, and how many of them one backfill run covers."""

    cadence: Cadence
    partitions_def: dg.TimeWindowPartitionsDefinition
    per_backfill_run: int

    def end_of(self, key: str) -> datetime:
        """The end of window ``key``: the latest bar close the window's forecasts may read."""
        return self.partitions_def.time_window_for_partition_key(key).end

    def ends(self, keys: list[str]) -> dict[str, datetime]:
        return {key: self.end_of(key) for key in keys}


def cadence_windows(cadence: Cadence, first_window: str | None = None, per_backfill_run: int | None = None) -> Windows:
    """The windows of ``cadence``, starting at ``first_window`` (a partition key; the default when None).

    Raises
    ------
    ValueError
        If ``first_window`` is not a key of the cadence's format (``2019-01-01`` daily,
        ``2019-01-01-00:00`` hourly) or ``per_backfill_run`` is not positive.
    """
    start = first_window or DEFAULT_FIRST_WINDOW[cadence.name]
    per_run = per_backfill_run or DEFAULT_WINDOWS_PER_BACKFILL_RUN[cadence.name]
    if per_run < 1:
        raise ValueError(f"{cadence.name}: windows per backfill run must be positive, got {per_run}")
    try:
        if cadence is HOURLY:
            partitions = dg.HourlyPartitionsDefinition(start_date=start, timezone="UTC")
        elif cadence is DAILY:
            partitions = dg.DailyPartitionsDefinition(start_date=start, timezone="UTC")
        else:
            raise ValueError(f"no partitions for cadence {cadence.name!r}")
    except (ValueError, dg.DagsterInvalidDefinitionError) as exc:
        example = DEFAULT_FIRST_WINDOW[cadence.name]
        raise ValueError(f"first {cadence.name} window {start!r} is not a window key like {example!r}: {exc}") from None
    return Windows(cadence, partitions, per_run)
