"""What ``forecasting-pipeline status`` reports: is the deployment working, check by check.

Each check is ``ok``, ``warn`` (worth knowing, nothing broken) or ``fail`` (something is wrong):
the database answers, every migration is applied, the model loads (and its version), each cadence's
newest written window is the one its schedule should have written by now, and the forecast service
is ready. The command exits non-zero when any check fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

import dagster as dg
import psycopg

from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.schedules import TICKS, chain_group
from forecasting_pipeline.settings import Settings, database_url
from forecasting_pipeline.storage.database import DatabaseUnavailableError, connect
from forecasting_pipeline.storage.migrations import applied_migrations, discover

State = Literal["ok", "warn", "fail"]

# How long after a tick its run may still be going before its window counts as missing.
RUN_GRACE = {"1h": timedelta(minutes=30), "1d": timedelta(hours=2)}
# The models whose rows `status` counts per cadence: ours, and Kronos's beside them.
MODELS = ("chronos-2", "ensemble", "kronos-base")


@dataclass(frozen=True)
class Check:
    """One answer: its name, state, a line for a person and details for a machine."""

    name: str
    state: State
    summary: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    checks: list[Check]
    checked_at: datetime

    @property
    def ok(self) -> bool:
        return all(check.state != "fail" for check in self.checks)

    def text(self) -> str:
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        lines = [f"{marks[c.state]}  {c.name:<12} {c.summary}" for c in self.checks]
        verdict = "all checks pass" if self.ok else f"{sum(c.state == 'fail' for c in self.checks)} check(s) failed"
        return "\n".join([*lines, verdict])

    def as_json(self) -> dict:
        return {"ok": self.ok, "checked_at": self.checked_at.isoformat(), "checks": [asdict(c) for c in self.checks]}


def gather_status(
    settings: Settings, instance: dg.DagsterInstance, load_model: bool = True, now: datetime | None = None,
) -> Status:
    """Every check, in order; a check that cannot run (no database) fails and says why."""
    now = now or datetime.now(timezone.utc)
    checks: list[Check] = []
    url = database_url()
    conn = _connect(url, checks)
    try:
        migrated = conn is not None and _append(checks, check_migrations(conn)).state == "ok"
        checks.append(check_model(settings) if load_model else Check("model", "warn", "not loaded (--no-model)"))
        for windows in settings.windows():
            # Rows are counted only in a migrated database: before that, ml_predictions may not exist.
            checks.append(check_cadence(windows, instance, conn if migrated else None, now))
    finally:
        if conn is not None:
            conn.close()
    checks.append(check_service(settings.forecast_service_url, required=settings.service_url is not None))
    return Status(checks, now)


def _append(checks: list[Check], check: Check) -> Check:
    checks.append(check)
    return check


def _connect(url: str | None, checks: list[Check]) -> psycopg.Connection | None:
    if not url:
        checks.append(Check("database", "fail", "DATABASE_URL is not set"))
        return None
    try:
        conn = connect(url, attempts=1, connect_timeout_s=5)
    except DatabaseUnavailableError as exc:
        checks.append(Check("database", "fail", str(exc).splitlines()[0]))
        return None
    conn.autocommit = True
    version = conn.execute("SHOW server_version").fetchone()[0]
    checks.append(Check("database", "ok", f"reachable (PostgreSQL {version})", {"server_version": version}))
    return conn


def check_migrations(conn: psycopg.Connection) -> Check:
    """Every migration the package carries is applied, and none was edited after it was."""
    known = discover()
    applied = applied_migrations(conn)
    pending = [m.filename for m in known if m.filename not in applied]
    changed = [m.filename for m in known if m.filename in applied and applied[m.filename] != m.checksum]
    details = {"applied": len(applied), "pending": pending, "changed_after_applying": changed}
    if pending:
        return Check("migrations", "fail", f"{len(pending)} pending ({', '.join(pending)}): run "
                     "`forecasting-pipeline migrate`", details)
    if changed:
        return Check("migrations", "fail", f"changed after they were applied: {', '.join(changed)}", details)
    return Check("migrations", "ok", f"{len(applied)} applied, none pending", details)


def check_model(settings: Settings) -> Check:
    """The configured checkpoint loads (on the CPU, so a busy GPU is not disturbed); its version."""
    from forecasting_pipeline.forecasting.model import load_chronos2

    try:
        loaded = load_chronos2(settings.chronos2_model, settings.chronos2_revision, "cpu", settings.chronos2_dtype)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the answer, reported in one line
        return Check("model", "fail", f"{settings.chronos2_model} does not load: {_first_line(exc)}")
    state: State = "warn" if loaded.random_weights else "ok"
    return Check("model", state, f"loads: {loaded.version}", {"model_version": loaded.version})


def expected_window(windows: Windows, now: datetime) -> str | None:
    """The newest window the cadence's schedule should have written by ``now`` (its tick, plus a run's grace)."""
    tick = _last_tick(windows.cadence.name, now - RUN_GRACE[windows.cadence.name])
    with dg.partition_loading_context(effective_dt=tick):
        return windows.partitions_def.get_last_partition_key()


def _last_tick(cadence: str, at: datetime) -> datetime:
    """The schedule's latest tick at or before ``at`` (UTC)."""
    tick_at = TICKS[cadence]
    hour = tick_at.get("hour_of_day")
    tick = at.replace(minute=tick_at["minute_of_hour"], second=0, microsecond=0)
    if hour is None:
        return tick if tick <= at else tick - timedelta(hours=1)
    tick = tick.replace(hour=hour)
    return tick if tick <= at else tick - timedelta(days=1)


def check_cadence(
    windows: Windows, instance: dg.DagsterInstance, conn: psycopg.Connection | None, now: datetime
) -> Check:
    """The cadence's newest written window against the one its schedule should have written; its rows."""
    name = windows.cadence.name
    written = instance.get_materialized_partitions(dg.AssetKey(f"ml_predictions_{name}"))
    newest = max(written) if written else None
    expected = expected_window(windows, now)
    details = {"newest_window": newest, "expected_window": expected, "last_successful_run": _last_run(instance, windows),
               "rows": _rows(conn, name, now) if conn is not None else None}
    if newest is None:
        return Check(f"cadence {name}", "fail", f"no window written yet; the schedule expects {expected}", details)
    behind = _windows_between(windows, newest, expected)
    details["windows_behind"] = behind
    rows = details["rows"] or {}
    made = rows.get("chronos-2", {})
    rows_text = (f"; newest chronos-2 rows: {made['latest_write_rows']}, written {made['age']} ago"
                 if made else "; no chronos-2 rows in ml_predictions")
    if behind > 0:
        return Check(f"cadence {name}", "fail", f"newest window {newest} is {behind} behind the schedule's "
                     f"{expected}{rows_text}", details)
    return Check(f"cadence {name}", "ok", f"newest window {newest}, as the schedule expects{rows_text}", details)


def _windows_between(windows: Windows, newest: str, expected: str | None) -> int:
    if expected is None or newest >= expected:
        return 0
    keys = windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(newest, expected))
    return len(keys) - 1


def _last_run(instance: dg.DagsterInstance, windows: Windows) -> dict | None:
    """The chain job's latest successful run (the schedule's runs and `forecasting-pipeline run`)."""
    runs = instance.get_run_records(
        filters=dg.RunsFilter(job_name=f"{chain_group(windows)}_job", statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1,
    )
    if not runs:
        return None
    record = runs[0]
    ended = record.end_time and datetime.fromtimestamp(record.end_time, timezone.utc)
    return {"run_id": record.dagster_run.run_id, "partition": record.dagster_run.tags.get("dagster/partition"),
            "ended_at": ended.isoformat() if ended else None}


def _rows(conn: psycopg.Connection, cadence: str, now: datetime) -> dict:
    """Per model: when its newest rows of the cadence were written, and how many that write held."""
    found = conn.execute(
        """
        SELECT model_name, max(created_at) FROM ml_predictions
        WHERE timeframe = %s AND model_name = ANY(%s) GROUP BY model_name
        """,
        (cadence, list(MODELS)),
    ).fetchall()
    rows = {}
    for model, newest in found:
        # One write is one transaction, whose rows share its created_at.
        count = conn.execute(
            "SELECT count(*) FROM ml_predictions WHERE timeframe = %s AND model_name = %s AND created_at = %s",
            (cadence, model, newest),
        ).fetchone()[0]
        rows[model] = {"written_at": newest.isoformat(), "age": _age(now - newest), "latest_write_rows": count}
    return rows


def check_service(url: str, required: bool) -> Check:
    """The forecast service's /readyz; unreachable is a failure only when FORECAST_SERVICE_URL names it."""
    try:
        status, body = _get_json(f"{url}/readyz")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("service", "fail" if required else "warn", f"not reachable at {url} ({reason})", {"url": url})
    if status == 200:
        return Check("service", "ok", f"ready at {url}: {body.get('model_version')}", {"url": url, **body})
    return Check("service", "fail", f"not ready at {url}: {body.get('reason', status)}", {"url": url, **body})


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
