"""What a backfill did, from its runs' records: windows requested and written, windows with nothing to
forecast and why, and the instrument-windows that validation excluded, grouped by rule.

The chain's assets record what this needs as they run (``metadata``): ``ml_predictions_<cadence>``
materialises each window it writes and its check ``every_window_written`` names the windows with
nothing to forecast; ``ohlcv_<cadence>`` records ``excluded_by_rule``. A window of a run that
failed as a whole is reported with the run's failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG

from forecasting_pipeline.orchestration.metadata import EVERY_WINDOW_WRITTEN

# Backfill states after which no more runs start.
FINISHED = frozenset({
    BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.FAILED, BulkActionStatus.CANCELED,
})


@dataclass(frozen=True)
class BackfillSummary:
    """One backfill's outcome over its windows; ``excluded`` is rule -> symbol -> windows."""

    cadence: str
    requested: list[str]
    written: list[str]
    nothing_to_forecast: dict[str, str]
    excluded: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)

    @property
    def not_written(self) -> list[str]:
        return [w for w in self.requested if w not in set(self.written)]

    def instrument_windows_excluded(self) -> dict[str, int]:
        return {rule: sum(len(ws) for ws in symbols.values()) for rule, symbols in sorted(self.excluded.items())}

    def metadata(self) -> dict[str, object]:
        return {
            "windows_requested": len(self.requested),
            "windows_written": len(self.written),
            "windows_with_nothing_to_forecast": dg.MetadataValue.json(self.nothing_to_forecast),
            "instrument_windows_excluded_by_rule": dg.MetadataValue.json(self.instrument_windows_excluded()),
            "excluded": dg.MetadataValue.json(self.excluded),
            "runs": dg.MetadataValue.json(self.runs),
        }

    def text(self) -> str:
        """The summary a person reads in the terminal, with the command that re-runs each window left out."""
        lines = [
            f"{len(self.requested)} {self.cadence} windows requested ({self.requested[0]} .. {self.requested[-1]}), "
            f"{len(self.written)} written, {len(self.not_written)} not written; "
            f"{len(self.runs)} run(s): " + ", ".join(f"{s.lower()} {n}" for s, n in _count(self.runs.values()).items()),
        ]
        for window in self.not_written:
            lines.append(f"  {window}: {self.nothing_to_forecast.get(window, 'no record of it in the runs')}")
            lines.append(f"    re-run: forecasting-pipeline run --cadence {self.cadence} --partition {window}")
        if self.excluded:
            lines.append("instrument-windows excluded by bar validation, by rule:")
            for rule, symbols in sorted(self.excluded.items()):
                counts = ", ".join(f"{s} {len(ws)}" for s, ws in sorted(symbols.items()))
                lines.append(f"  {rule}: {sum(len(ws) for ws in symbols.values())} ({counts})")
        return "\n".join(lines)


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})))


def summarise_runs(
    instance: dg.DagsterInstance, runs: Sequence[dg.DagsterRun], cadence: str, requested: Sequence[str]
) -> BackfillSummary:
    """Summarise the chain's ``runs`` of ``cadence`` over the windows ``requested``."""
    written: set[str] = set()
    nothing: dict[str, str] = {}
    failures: dict[str, str] = {}
    excluded: dict[str, dict[str, list[str]]] = {}
    for run in runs:
        failure = _read_run(instance, run, cadence, written, nothing, excluded)
        if failure:
            for window in _windows_of(run, requested):
                failures.setdefault(window, failure)
    unwritten = [w for w in requested if w not in written]
    reasons = {w: nothing.get(w) or failures.get(w) or "no run of this backfill wrote it" for w in unwritten}
    return BackfillSummary(
        cadence, list(requested), [w for w in requested if w in written], reasons, excluded,
        {run.run_id: run.status.value for run in runs},
    )


def _read_run(instance, run, cadence: str, written: set, nothing: dict, excluded: dict) -> str | None:
    """Fold one run's records into the summary; the run's failure message, if it failed."""
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION,
             dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_FAILURE}
    failure, ohlcv_seen, step_errors = None, False, []
    for record in instance.all_logs(run.run_id, of_type=kinds):
        event = record.dagster_event
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            failure = f"run {run.run_id} failed: {record.message}"
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            step_errors.append(f"step {event.step_key}: {_first_line(event.event_specific_data.error)}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if evaluation.check_name == EVERY_WINDOW_WRITTEN:
                nothing.update(evaluation.metadata["windows_with_nothing_to_forecast"].value)
        else:
            materialization = record.asset_materialization
            if materialization.asset_key == dg.AssetKey(f"ml_predictions_{cadence}"):
                written.add(materialization.partition)
            elif materialization.asset_key == dg.AssetKey(f"ohlcv_{cadence}") and not ohlcv_seen:
                # Every window's event of a range run carries the run's metadata: read one.
                ohlcv_seen = True
                for rule, symbols in materialization.metadata["excluded_by_rule"].value.items():
                    for symbol, windows in symbols.items():
                        excluded.setdefault(rule, {}).setdefault(symbol, []).extend(windows)
    if failure and step_errors:
        # Why, not only where: each failed step's own error says what to fix.
        failure = f"run {run.run_id} failed: " + "; ".join(step_errors)
    return failure


def _first_line(error) -> str:
    """The first line of the error a step raised: the innermost cause, past Dagster's wrapping of it."""
    if error is None:
        return "no error recorded"
    while error.cause is not None:
        error = error.cause
    return (error.message.strip().splitlines() or [error.cls_name or "error"])[0]


def _windows_of(run: dg.DagsterRun, requested: Sequence[str]) -> list[str]:
    """The requested windows a run covered (window keys sort in time order)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return [w for w in requested if start and end and start <= w <= end]


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out
