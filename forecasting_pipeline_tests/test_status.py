"""`forecasting-pipeline status`: each check against a real database, a real Dagster instance and real runs."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from forecasting_pipeline.orchestration.assembly import build_definitions
from forecasting_pipeline.orchestration.status import expected_window, gather_status
from forecasting_pipeline.settings import Settings
from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, HOURLY_WINDOWS, free_port

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def project_env(tmp_path, tiny_checkpoint, monkeypatch):
    """``project_env(database_url)``: the environment of `make dev` on that database, with the tiny checkpoint."""

    def make(database_url: str) -> dict[str, str]:
        (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        env = {"DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_URL": dagster_storage_url(database_url),
               "DATABASE_URL": database_url, "CHRONOS2_MODEL": str(tiny_checkpoint), "CHRONOS2_DEVICE": "cpu",
               "FRAMES_DIR": str(tmp_path / "frames"), "SERVE_PORT": str(free_port())}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return make


def test_when_each_schedule_tick_is_reached_then_the_expected_window_is_the_one_it_targets():
    # The 05:45 tick (plus two hours for its run) targets the previous day; the :55 tick the window two hours back.
    assert expected_window(DAILY_WINDOWS, datetime(2026, 3, 4, 7, 44, tzinfo=timezone.utc)) == "2026-03-02"
    assert expected_window(DAILY_WINDOWS, datetime(2026, 3, 4, 7, 45, tzinfo=timezone.utc)) == "2026-03-03"
    assert expected_window(HOURLY_WINDOWS, datetime(2026, 3, 4, 9, 24, tzinfo=timezone.utc)) == "2026-03-04-06:00"
    assert expected_window(HOURLY_WINDOWS, datetime(2026, 3, 4, 9, 25, tzinfo=timezone.utc)) == "2026-03-04-07:00"


def test_when_the_daily_chain_has_written_its_window_then_status_passes_it_and_fails_the_unwritten_hourly(
    database_url, project_env
):
    project_env(database_url)
    settings = Settings.from_env()
    with dg.DagsterInstance.get() as instance:
        result = build_definitions(settings).resolve_job_def("chronos2_1d_job").execute_in_process(
            instance=instance, partition_key=expected_window(DAILY_WINDOWS, NOW))
        assert result.success

        status = gather_status(settings, instance, now=NOW)
        later = gather_status(settings, instance, load_model=False, now=NOW + timedelta(days=3))

    checks = {c.name: c for c in status.checks}
    assert [(c.name, c.state) for c in status.checks] == [
        ("database", "ok"), ("migrations", "ok"), ("model", "warn"), ("cadence 1h", "fail"), ("cadence 1d", "ok"),
        ("service", "warn"),
    ]
    assert not status.ok
    assert checks["model"].summary.endswith("RANDOM-WEIGHTS")
    assert checks["cadence 1d"].details["newest_window"] == "2026-03-03"
    assert checks["cadence 1d"].details["rows"]["chronos-2"]["latest_write_rows"] == 23
    assert checks["cadence 1d"].details["last_successful_run"]["run_id"] == result.run_id
    assert checks["cadence 1h"].summary == "no window written yet; the schedule expects 2026-03-04-06:00"
    behind = {c.name: c for c in later.checks}["cadence 1d"]
    assert (behind.state, behind.details["windows_behind"]) == ("fail", 3)
    assert behind.summary.startswith("newest window 2026-03-03 is 3 behind the schedule's 2026-03-06")


def test_when_migrations_are_pending_then_the_command_exits_non_zero_with_json_naming_them(empty_database_url, project_env):
    env = {**os.environ, **project_env(empty_database_url), "FORECAST_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}

    done = subprocess.run([sys.executable, "-m", "forecasting_pipeline.cli", "status", "--json", "--no-model"],
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert report["ok"] is False
    assert (states["database"], states["migrations"], states["service"]) == ("ok", "fail", "fail")
    [migrations] = [c for c in report["checks"] if c["name"] == "migrations"]
    assert migrations["details"]["pending"][0] == "20260401_ml_predictions.sql"
    assert "Traceback" not in done.stderr


def test_when_the_database_is_unreachable_then_status_says_so_in_one_line():
    env = {**os.environ, "DATABASE_URL": f"postgresql://nobody:hidden-pw@127.0.0.1:{free_port()}/x"}

    done = subprocess.run([sys.executable, "-m", "forecasting_pipeline.cli", "status", "--no-model"],
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first.startswith("FAIL  database ")
    assert "hidden-pw" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr

