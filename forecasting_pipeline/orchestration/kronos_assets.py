"""Kronos's batch service as a Dagster asset, so that Dagster serialises it with Chronos-2 in the ``gpu`` pool.

Optional: present only when ``KRONOS_BATCH_URL`` is set. Each cadence gets
``kronos_predictions_<cadence>``; materialising a window triggers one batch
(``forecasting.kronos_batch``) and waits for it.
"""


# No `from __future__ import annotations` here: Dagster reads these annotations (resources) at decoration time.
import dagster as dg
from pydantic import Field

from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY
from forecasting_pipeline.forecasting.kronos_batch import BatchResponse, describe_url, trigger_holding_gpu_lock
from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.pools import GPU_POOL
from forecasting_pipeline.orchestration.resources import PostgresResource
from forecasting_pipeline.orchestration.schedules import TICKS
from forecasting_pipeline.storage.database import DatabaseUnavailableError
from forecasting_pipeline.storage.ml_predictions import kronos_rows_since


class KronosBatchResource(dg.ConfigurableResource):
    """Kronos's batch service (KRONOS_BATCH_URL) and the GPU lock held while it runs."""

    url: str = Field(description="URL the batch request is POSTed to (a secret, it may hold credentials: EnvVar KRONOS_BATCH_URL).")
    token: str | None = Field(default=None, description="Bearer token for the service, if it wants one (EnvVar KRONOS_BATCH_TOKEN).")
    timeout_s: float = Field(default=900.0, description="Seconds to wait for the service's answer (KRONOS_BATCH_TIMEOUT_S).")
    lock_database_url: str | None = Field(
        default=None, description="Database of the GPU advisory lock, the ml_predictions one (a secret; EnvVar DATABASE_URL)."
    )
    lock_key: int = Field(default=GPU_LOCK_KEY, description="PostgreSQL advisory-lock key every GPU user takes (docs/gpu-sharing.md).")
    lock_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for the GPU lock; Kronos is then triggered anyway, as it would be without us."
    )

    def describe(self) -> str:
        return describe_url(self.url)

    def run_batch(self, body: dict) -> tuple[BatchResponse, dict[str, object]]:
        """Trigger one batch holding the GPU lock; returns the answer and the lock's record."""
        return trigger_holding_gpu_lock(
            self.url, body, token=self.token, timeout_s=self.timeout_s, lock_database_url=self.lock_database_url,
            lock_key=self.lock_key, lock_timeout_s=self.lock_timeout_s,
        )


def build_kronos_batch(windows: Windows) -> list[dg.AssetsDefinition]:
    """``kronos_predictions_<cadence>``: one Kronos batch per window, in the ``gpu`` pool."""
    cadence = windows.cadence.name

    @dg.asset(
        name=f"kronos_predictions_{cadence}",
        partitions_def=windows.partitions_def,
        group_name=f"kronos_{cadence}",
        kinds={"http", "postgres"},
        pool=GPU_POOL,
        check_specs=[dg.AssetCheckSpec(
            "kronos_wrote_rows", asset=f"kronos_predictions_{cadence}",
            description="The batch wrote at least one kronos-base row of this timeframe while the request was open.",
        )],
    )
    def kronos_predictions(
        context: dg.AssetExecutionContext, kronos_batch: KronosBatchResource, database: PostgresResource
    ) -> dg.MaterializeResult:
        """Kronos's rows in ml_predictions, written by its own batch service, which this asset triggers over HTTP.

        Kronos is triggered even when the database is unreachable (no GPU lock, rows not counted):
        its batch must never wait on ours. Only a failure of Kronos's own service fails the run.
        """
        window = context.partition_time_window
        body = {"timeframe": cadence, "window_start": window.start.isoformat(), "window_end": window.end.isoformat()}
        # The server's clock, like created_at's default: no skew between this machine and the database.
        # No connection stays open while the batch runs, which may take minutes.
        started_at = _database_clock(context, database)
        response, lock = kronos_batch.run_batch(body)
        written = _rows_since(context, database, cadence, started_at)
        context.log.info(f"Kronos batch at {kronos_batch.describe()}: {response.status} in {response.seconds:.1f}s, {written} rows")
        return dg.MaterializeResult(
            metadata={
                "service": kronos_batch.describe(),
                "request": dg.MetadataValue.json(body),
                "status": response.status,
                "seconds": round(response.seconds, 3),
                "response": response.excerpt,
                "kronos_rows_written": _counted(written),
                **lock,
            },
            check_results=[dg.AssetCheckResult(
                check_name="kronos_wrote_rows",
                passed=bool(written),
                # A service that answers before its batch has written (202 Accepted) fails this check, not the run.
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"kronos_rows_written": _counted(written), "status": response.status},
            )],
        )

    return [kronos_predictions]


def _database_clock(context: dg.AssetExecutionContext, database: PostgresResource):
    """The database's clock_timestamp(), or None (said in the log) when it is unreachable."""
    try:
        with database.connection() as conn:
            return conn.execute("SELECT clock_timestamp()").fetchone()[0]
    except DatabaseUnavailableError as exc:
        context.log.warning(f"{exc} Triggering Kronos anyway; its rows will not be counted.")
        return None


def _rows_since(context: dg.AssetExecutionContext, database: PostgresResource, cadence: str, since) -> int | None:
    if since is None:
        return None
    try:
        with database.connection() as conn:
            return kronos_rows_since(conn, cadence, since)
    except DatabaseUnavailableError as exc:
        context.log.warning(f"{exc} Kronos's rows are not counted.")
        return None


def _counted(written: int | None) -> int | str:
    return "not counted: the database was unreachable" if written is None else written


def kronos_job(windows: Windows) -> "dg.UnresolvedAssetJobDefinition":
    cadence = windows.cadence.name
    return dg.define_asset_job(
        name=f"kronos_{cadence}_job",
        selection=dg.AssetSelection.groups(f"kronos_{cadence}"),
        partitions_def=windows.partitions_def,
        description=f"Trigger Kronos's {cadence} batch over HTTP, in the gpu pool.",
    )


def kronos_schedule(windows: Windows, job: "dg.UnresolvedAssetJobDefinition") -> dg.ScheduleDefinition:
    """The chain's own ticks (:55 hourly, 05:45 daily), stopped until someone hands Kronos's timing to Dagster."""
    return dg.build_schedule_from_partitioned_job(
        job, name=f"kronos_{windows.cadence.name}_schedule", default_status=dg.DefaultScheduleStatus.STOPPED,
        **TICKS[windows.cadence.name],
    )
