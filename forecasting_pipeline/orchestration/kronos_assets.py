"""Triggering Kronos's existing batch service over HTTP from Dagster, so Dagster serialises it with Chronos-2.

Optional, and Kronos is not changed. When ``KRONOS_BATCH_URL`` is set, each cadence gets an asset
``kronos_predictions_<cadence>`` in the ``gpu`` pool. Materialising a window POSTs to the service
and waits for its answer, so a Kronos batch launched this way never overlaps a Chronos-2 forecast
run by Dagster. While the request is open the asset also holds the GPU advisory lock
(``gpu.GPU_LOCK_KEY``), so lock-aware processes outside Dagster see the GPU as busy.

This module owns the HTTP call and its errors (``trigger_batch``), the resource that carries the
service's settings, and the asset, its check, job and schedule.
"""


# No `from __future__ import annotations` here: Dagster reads these annotations (resources) at decoration time.
import base64
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from forecasting_pipeline.orchestration.cadences import Cadence
from forecasting_pipeline.storage.database import PostgresResource
from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY, advisory_lock
from forecasting_pipeline.storage.ml_predictions import KRONOS_MODEL_NAME
from forecasting_pipeline.orchestration.schedules import TICKS

# A response is shown in metadata and errors only this far: a service may answer with a page of HTML.
RESPONSE_EXCERPT_CHARS = 300


class KronosBatchError(RuntimeError):
    """The batch service failed, refused or did not answer; the message names the URL without credentials."""


def describe_url(url: str) -> str:
    """``scheme://host[:port]/path``: the URL without user, password, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class BatchResponse:
    status: int
    seconds: float
    excerpt: str


def trigger_batch(url: str, body: dict, *, token: str | None, timeout_s: float) -> BatchResponse:
    """POST ``body`` as JSON to the batch service and wait for its answer; any 2xx is success.

    ``token`` is sent as a Bearer token; a user and password in the URL, as Basic auth.

    Raises
    ------
    KronosBatchError
        On a non-2xx answer (with the status and the start of the answer), no connection, or no
        answer within ``timeout_s``. The message never holds the token or the URL's credentials.
    """
    where = describe_url(url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    parts = urlsplit(url)
    if parts.username is not None:
        # urllib does not send a URL's user and password itself: they leave the URL as Basic auth.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode(errors="replace")
            return BatchResponse(response.status, time.perf_counter() - started, text[:RESPONSE_EXCERPT_CHARS])
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")[:RESPONSE_EXCERPT_CHARS]
        raise KronosBatchError(f"Kronos batch service at {where} answered {error.code} {error.reason}: {text}") from None
    except (TimeoutError, socket.timeout, urllib.error.URLError) as error:
        # urllib raises a timeout bare while reading the answer, wrapped in URLError while connecting.
        if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise KronosBatchError(f"Kronos batch service at {where} is unreachable: {error.reason}") from None
        raise KronosBatchError(
            f"Kronos batch service at {where} did not answer within {timeout_s:g} s "
            "(KRONOS_BATCH_TIMEOUT_S); the batch may still be running there"
        ) from None


class KronosBatchResource(dg.ConfigurableResource):
    """Kronos's batch service (KRONOS_BATCH_URL) and the GPU lock held while it runs."""

    url: str = Field(description="URL the batch request is POSTed to (a secret, it may hold credentials: EnvVar KRONOS_BATCH_URL).")
    token: str | None = Field(default=None, description="Bearer token for the service, if it wants one (EnvVar KRONOS_BATCH_TOKEN).")
    timeout_s: float = Field(default=900.0, description="Seconds to wait for the service's answer (KRONOS_BATCH_TIMEOUT_S).")
    lock_database_url: str | None = Field(
        default=None, description="Database of the GPU advisory lock, the ml_predictions one (a secret; EnvVar DATABASE_URL)."
    )
    lock_key: int = Field(default=GPU_LOCK_KEY, description="PostgreSQL advisory-lock key every GPU user takes (README).")
    lock_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for the GPU lock; Kronos is then triggered anyway, as it would be without us."
    )

    def describe(self) -> str:
        return describe_url(self.url)

    def run_batch(self, body: dict) -> tuple[BatchResponse, dict[str, object]]:
        """Trigger one batch holding the GPU lock; returns the answer and the lock's record."""
        if not self.lock_database_url:
            return trigger_batch(self.url, body, token=self.token, timeout_s=self.timeout_s), {"gpu_lock": "not configured"}
        waited = time.perf_counter()
        with advisory_lock(self.lock_database_url, self.lock_key, self.lock_timeout_s) as taken:
            lock = {"gpu_lock_acquired": taken, "gpu_lock_wait_seconds": round(time.perf_counter() - waited, 3)}
            # Not taken: another GPU user held it past the timeout. Kronos is triggered anyway;
            # it ran unserialised before this asset existed and its latency must not regress.
            return trigger_batch(self.url, body, token=self.token, timeout_s=self.timeout_s), lock


def kronos_rows_since(conn, timeframe: str, since: datetime) -> int:
    """Kronos rows of one timeframe written (created or rewritten) at or after ``since``, by the server's clock."""
    return conn.execute(
        "SELECT count(*) FROM ml_predictions WHERE model_name = %s AND timeframe = %s AND created_at >= %s",
        (KRONOS_MODEL_NAME, timeframe, since),
    ).fetchone()[0]


def build_kronos_batch(cadence: Cadence) -> list[dg.AssetsDefinition]:
    """``kronos_predictions_<cadence>``: one Kronos batch per window, in the ``gpu`` pool."""
    c = cadence.name

    @dg.asset(
        name=f"kronos_predictions_{c}",
        partitions_def=cadence.partitions_def,
        group_name=f"kronos_{c}",
        kinds={"http", "postgres"},
        pool="gpu",
        check_specs=[dg.AssetCheckSpec(
            "kronos_wrote_rows", asset=f"kronos_predictions_{c}",
            description="The batch wrote at least one kronos-base row of this timeframe while the request was open.",
        )],
    )
    def kronos_predictions(
        context: dg.AssetExecutionContext, kronos_batch: KronosBatchResource, database: PostgresResource
    ) -> dg.MaterializeResult:
        """Kronos's rows in ml_predictions, written by its own batch service, which this asset triggers over HTTP."""
        window = context.partition_time_window
        body = {"timeframe": c, "window_start": window.start.isoformat(), "window_end": window.end.isoformat()}
        # The server's clock, like created_at's default: no skew between this machine and the database.
        # No connection stays open while the batch runs, which may take minutes.
        with database.connection() as conn:
            started_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        response, lock = kronos_batch.run_batch(body)
        with database.connection() as conn:
            written = kronos_rows_since(conn, c, started_at)
        context.log.info(f"Kronos batch at {kronos_batch.describe()}: {response.status} in {response.seconds:.1f}s, {written} rows")
        return dg.MaterializeResult(
            metadata={
                "service": kronos_batch.describe(),
                "request": dg.MetadataValue.json(body),
                "status": response.status,
                "seconds": round(response.seconds, 3),
                "response": response.excerpt,
                "kronos_rows_written": written,
                **lock,
            },
            check_results=[dg.AssetCheckResult(
                check_name="kronos_wrote_rows",
                passed=written > 0,
                # A service that answers before its batch has written (202 Accepted) fails this check, not the run.
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"kronos_rows_written": written, "status": response.status},
            )],
        )

    return [kronos_predictions]


def kronos_job(cadence: Cadence) -> "dg.UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        name=f"kronos_{cadence.name}_job",
        selection=dg.AssetSelection.groups(f"kronos_{cadence.name}"),
        partitions_def=cadence.partitions_def,
        description=f"Trigger Kronos's {cadence.name} batch over HTTP, in the gpu pool.",
    )


def kronos_schedule(cadence: Cadence, job: "dg.UnresolvedAssetJobDefinition") -> dg.ScheduleDefinition:
    """The chain's own ticks (:55 hourly, 05:45 daily), stopped until someone hands Kronos's timing to Dagster."""
    return dg.build_schedule_from_partitioned_job(
        job, name=f"kronos_{cadence.name}_schedule", default_status=dg.DefaultScheduleStatus.STOPPED,
        **TICKS[cadence.name],
    )
