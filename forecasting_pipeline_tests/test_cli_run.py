"""`forecasting-pipeline run` (behind `make run`) and `backfill`, in real processes on a real instance and database."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url

REPO = Path(__file__).resolve().parents[1]


def clock_ahead(hours: int) -> dict[str, str]:
    """The environment that sets a process's wall clock ``hours`` ahead of this machine's (libfaketime).

    The monotonic clock is left alone, so timeouts and durations inside the process stay true.
    """
    import libfaketime

    _, additions = libfaketime.get_reload_information()
    return {**additions, "FAKETIME": f"+{hours}h"}


def test_when_the_main_job_runs_then_23_rows_are_written_and_summarised_whatever_the_clients_clock(
    empty_database_url, tiny_checkpoint, tmp_path
):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {
        **os.environ,
        "DATABASE_URL": empty_database_url,
        "DAGSTER_PG_URL": dagster_storage_url(empty_database_url),
        "DAGSTER_HOME": str(tmp_path),
        "CHRONOS2_MODEL": str(tiny_checkpoint),
        # The command's machine three hours ahead of the database's: the summary must still find the rows.
        **clock_ahead(3),
    }

    sessions_before = _sessions(empty_database_url)

    done = subprocess.run(
        [sys.executable, "-m", "forecasting_pipeline.cli", "run", "--cadence", "1d", "--partition", "2025-06-02"],
        env=env, capture_output=True, text=True, timeout=240,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "window 2025-06-02 (1d): 23 chronos-2 rows written to ml_predictions" in done.stdout
    assert "model_version: chronos-forecasting==2.3.2" in done.stdout
    with psycopg.connect(empty_database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM ml_predictions WHERE model_name = 'chronos-2'").fetchone()[0]
        slots = conn.execute("SELECT count(*) FROM concurrency_limits WHERE concurrency_key = 'gpu' AND \"limit\" = 1").fetchone()[0]
        runs = conn.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()[0]
    assert rows == 23
    assert slots == 1
    assert runs == 1
    # Dagster's storages hold their connections (orchestration/instance_storage.py): about 70 here, on a database
    # whose Dagster tables this run creates; with one connection per storage call, over 400.
    assert _sessions(empty_database_url) - sessions_before - 1 < 150


def _sessions(url: str) -> int:
    """Connections ever opened to the database (this query's own included)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]



@pytest.fixture
def project_instance_home(empty_database_url, tmp_path, monkeypatch):
    """DAGSTER_HOME with the project's dagster.yaml, its storages in an empty database: what `make dev` runs on."""
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(empty_database_url))
    return tmp_path


def test_when_a_backfill_is_submitted_without_dagster_home_then_the_projects_instance_holds_it_for_the_daemon(
    project_instance_home
):
    # As on a fresh clone: no DAGSTER_HOME, so the command takes the repository's (its dagster.yaml
    # reads DAGSTER_PG_URL, this test's database); the UI's address as configured.
    env = {name: value for name, value in os.environ.items() if name != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "forecasting_pipeline.cli", "backfill", "--cadence", "1d",
         "--from", "2025-06-02", "--to", "2025-06-06", "--no-wait"],
        env={**env, "DAGSTER_UI_URL": "http://dagster.example:8080/"}, capture_output=True, text=True, timeout=240,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 1d windows 2025-06-02...2025-06-06 as 1 run(s)" in done.stdout
    backfill_id = done.stdout.split()[1].rstrip(":")
    assert done.stdout.rstrip().endswith(f"Progress: http://dagster.example:8080/runs/b/{backfill_id}")
    with dg.DagsterInstance.get() as instance:
        backfill = instance.get_backfill(backfill_id)
        assert backfill.status == BulkActionStatus.REQUESTED
        targets = backfill.asset_backfill_data.target_subset
        assert sorted(targets.get_partitions_subset(dg.AssetKey("ml_predictions_1d")).get_partition_keys()) == [
            "2025-06-02", "2025-06-03", "2025-06-04", "2025-06-05", "2025-06-06"
        ]


def test_when_a_backfill_range_is_reversed_or_not_a_window_then_the_command_says_so_and_submits_nothing(
    project_instance_home
):
    for start, end, said in [("2025-06-06", "2025-06-02", "ends (2025-06-02) before it starts (2025-06-06)"),
                             ("2025-06-02", "2025-13-01", "['2025-13-01'] are not 1d windows")]:
        done = subprocess.run(
            [sys.executable, "-m", "forecasting_pipeline.cli", "backfill", "--cadence", "1d", "--from", start, "--to", end],
            env=os.environ, capture_output=True, text=True, timeout=240,
        )

        assert done.returncode == 2
        assert done.stderr.startswith("forecasting-pipeline backfill: ")
        assert said in done.stderr
        assert "Traceback" not in done.stderr
    with dg.DagsterInstance.get() as instance:
        assert instance.get_backfills() == []


def test_when_no_daemon_launches_the_runs_then_the_waiting_command_gives_up_saying_how_to_look_later(
    project_instance_home
):
    done = subprocess.run(
        [sys.executable, "-m", "forecasting_pipeline.cli", "backfill", "--cadence", "1d",
         "--from", "2025-06-02", "--to", "2025-06-03", "--wait-timeout-s", "1"],
        env=os.environ, capture_output=True, text=True, timeout=240,
    )

    assert done.returncode == 3, done.stdout + done.stderr
    backfill_id = done.stdout.split()[1].rstrip(":")
    assert f"has not finished; see it later with `forecasting-pipeline backfill-summary {backfill_id}`" in done.stdout


def test_when_asked_for_its_version_then_the_command_names_itself_and_what_it_runs_on():
    done = subprocess.run([sys.executable, "-m", "forecasting_pipeline.cli", "--version"],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0
    assert done.stdout.startswith("forecasting-pipeline 0.1.0 (dagster 1.13.27, chronos-forecasting 2.3.2, Python 3.")


def test_when_run_dev_serve_and_status_start_then_each_takes_the_demo_checkpoint_rule():
    done = subprocess.run(["make", "-n", "run", "dev", "serve", "status"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)

    commands = [line for line in done.stdout.splitlines() if " with-db " in line]
    assert len(commands) == 4
    assert all("with-db --demo-model-if-unset -- " in line for line in commands)


def test_when_the_defaults_are_fully_embedded_then_with_db_gives_its_command_the_demo_checkpoint_loudly(
    tmp_path, tiny_checkpoint
):
    # The demo checkpoint as an earlier start left it (writing one is init-model's, tested with the model).
    shutil.copytree(tiny_checkpoint, tmp_path / ".models" / "chronos2-random-tiny")
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "CHRONOS2_MODEL")}
    show = [sys.executable, "-c", "import os; print('model:', os.environ['CHRONOS2_MODEL'])"]

    done = subprocess.run(
        [sys.executable, "-m", "forecasting_pipeline.cli", "with-db", "--pgdata", str(tmp_path / "pgdata"),
         "--demo-model-if-unset", "--", *show],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )

    assert done.returncode == 0, done.stderr
    assert "!! CHRONOS2_MODEL is unset and the database is the embedded demo one: using a random tiny checkpoint" in done.stdout
    assert done.stdout.rstrip().endswith(f"model: {tmp_path / '.models' / 'chronos2-random-tiny'}")
    assert (tmp_path / ".models" / "chronos2-random-tiny" / "model.safetensors").exists()


def test_when_a_database_or_a_model_is_given_then_the_demo_checkpoint_never_replaces_the_model():
    from forecasting_pipeline.cli import _demo_model_if_unset
    from forecasting_pipeline.settings import Settings

    for env in ({"DATABASE_URL": "postgresql://db.example/forecasting"},
                {"FORECASTING_EMBEDDED_DB": "1", "CHRONOS2_MODEL": "/models/chronos-2"}):
        settings = Settings.from_env(env)
        assert _demo_model_if_unset(settings) is settings
