"""Asset backfills of a cadence's forecast chain, submitted from code or the command line as the UI submits them.

A backfill is stored on the Dagster instance and run by the daemon (``make dev`` starts one). The
chain's ``BackfillPolicy.multi_run(windows_per_backfill_run)`` makes the daemon launch one run per
chunk of windows (WINDOWS_PER_BACKFILL_RUN_<CADENCE>, else the cadence's default), not one per
window. Dagster's own CLI cannot do this:
``dagster asset materialize --partition-range`` refuses assets without a single-run policy, and
``dagster job backfill`` launches one run per partition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

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
    with_ensemble: bool = False,
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
    with_ensemble
        Also ``ensemble_forecasts_<cadence>``: the daemon runs each of its windows after the chain's.
    """
    keys = partition_range(windows, start, end)
    group = chain_group(windows)
    selection = dg.AssetSelection.groups(group).resolve(asset_graph)
    if not selection:
        raise ValueError(f"the asset graph has no {group} assets to backfill")
    if with_ensemble:
        ensemble = dg.AssetKey(f"ensemble_forecasts_{windows.cadence.name}")
        if not asset_graph.has(ensemble):
            raise ValueError(f"the asset graph has no {ensemble.to_user_string()} to backfill")
        selection = {*selection, ensemble}
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


def backfill_windows(instance: dg.DagsterInstance, backfill_id: str) -> tuple[str, list[str]]:
    """The cadence and the windows a stored chain backfill targets; ValueError when it is no chain backfill."""
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise ValueError(f"no backfill {backfill_id!r} on this instance (DAGSTER_HOME)")
    targets = backfill.asset_backfill_data.target_subset if backfill.asset_backfill_data else None
    for key in targets.asset_keys if targets else ():
        name = key.to_user_string()
        if name.startswith("ml_predictions_"):
            return name.removeprefix("ml_predictions_"), sorted(targets.get_partitions_subset(key).get_partition_keys())
    raise ValueError(f"backfill {backfill_id} does not target a forecast chain (no ml_predictions_<cadence>)")


def wait_for_backfill(
    instance: dg.DagsterInstance, backfill_id: str, timeout_s: float | None, say: Callable[[str], None],
    poll_s: float = 2.0,
) -> bool:
    """Wait until the backfill has finished launching and running its runs; False on ``timeout_s``.

    ``say`` hears progress: each time a run ends, and once if nothing has started after a minute
    (the runs are launched by the Dagster daemon, which ``make dev`` starts).
    """
    from forecasting_pipeline.orchestration.backfill_summary import FINISHED, backfill_runs

    started, ended_seen, hinted = time.monotonic(), -1, False
    while True:
        runs = backfill_runs(instance, backfill_id)
        ended = sum(run.is_finished for run in runs)
        if instance.get_backfill(backfill_id).status in FINISHED and ended == len(runs):
            return True
        if ended != ended_seen:
            say(f"runs: {ended} of {len(runs)} launched so far have ended")
            ended_seen = ended
        waited = time.monotonic() - started
        if not runs and waited > 60 and not hinted:
            say("no run has started yet: the Dagster daemon launches them (`make dev` starts one)")
            hinted = True
        if timeout_s is not None and waited > timeout_s:
            return False
        time.sleep(poll_s)
