"""Asset backfills of a cadence's forecast chain, submitted from code or the command line as the UI submits them.

A backfill is stored on the Dagster instance and run by the daemon (``make dev`` starts one). The
chain's ``BackfillPolicy.multi_run(windows_per_backfill_run)`` makes the daemon launch one run per
chunk of windows (30 daily or 120 hourly), not one per window. Dagster's own CLI cannot do this:
``dagster asset materialize --partition-range`` refuses assets without a single-run policy, and
``dagster job backfill`` launches one run per partition.
"""

from __future__ import annotations

import math
import time

import dagster as dg
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.schedules import chain_group


def partition_range(windows: Windows, start: str, end: str) -> list[str]:
    """The window keys from ``start`` to ``end``, both inclusive, in order.

    Raises
    ------
    ValueError
        If either key is not a window of the cadence, or ``end`` precedes ``start``.
    """
    keys = windows.partitions_def.get_partition_keys()
    missing = [k for k in (start, end) if not windows.partitions_def.has_partition_key(k)]
    if missing:
        raise ValueError(f"{missing} are not {windows.cadence.name} windows (e.g. {keys[0]!r} .. {keys[-1]!r})")
    first, last = keys.index(start), keys.index(end)
    if last < first:
        raise ValueError(f"backfill range ends ({end}) before it starts ({start})")
    return keys[first : last + 1]


def runs_for(windows: Windows, n_windows: int) -> int:
    """Runs the daemon launches for ``n_windows`` windows of the chain."""
    return math.ceil(n_windows / windows.per_backfill_run)


def submit_chain_backfill(
    instance: dg.DagsterInstance,
    asset_graph: BaseAssetGraph,
    windows: Windows,
    start: str,
    end: str,
    run_config: dict | None = None,
    title: str | None = None,
) -> str:
    """Store an asset backfill of the cadence's chain over ``start``..``end`` on ``instance``; return its id.

    Parameters
    ----------
    instance
        The Dagster instance the daemon watches.
    asset_graph
        The code location's asset graph (``defs.resolve_asset_graph()``).
    windows
        Whose chain (group ``chronos2_<cadence>``) to backfill.
    start, end
        First and last window keys, inclusive (``2025-03-01``, or ``2026-03-02-15:00`` hourly).
    run_config
        Run config for every run (e.g. ``ForecastConfig`` of ``chronos2_forecasts_<cadence>``).
    """
    keys = partition_range(windows, start, end)
    group = chain_group(windows)
    selection = dg.AssetSelection.groups(group).resolve(asset_graph)
    if not selection:
        raise ValueError(f"the asset graph has no {group} assets to backfill")
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        partition_names=keys,
        asset_selection=sorted(selection),
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title or f"{group} {start}...{end}",
        description=None,
        run_config=run_config,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id
