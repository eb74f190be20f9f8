"""The optional Kronos batch trigger: one HTTP request per window, in the gpu pool, holding the GPU lock.

Kronos's service cannot run here, so a small HTTP server stands in for it (conftest's
FakeKronosService); the database, the advisory lock and the Dagster runs are real.
"""

import importlib

import dagster as dg
import pytest

from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY
from forecasting_pipeline.forecasting.kronos_batch import describe_url
from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource, build_kronos_batch
from forecasting_pipeline.orchestration.pools import GPU_POOL
from forecasting_pipeline.orchestration.resources import PostgresResource
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS
from forecasting_pipeline_tests.test_reliability import event_text, user_error

WINDOW = "2025-06-02"
ASSET = "kronos_predictions_1d"


def _materialize(instance, database_url, database=None, **settings):
    resources = {
        "kronos_batch": KronosBatchResource(**{"lock_database_url": database_url, **settings}),
        "database": database or PostgresResource(url=database_url),
    }
    return dg.materialize(
        build_kronos_batch(DAILY_WINDOWS), partition_key=WINDOW, resources=resources, instance=instance, raise_on_error=False
    )


def test_when_a_window_is_materialised_then_kronos_is_asked_for_it_while_the_gpu_lock_is_held(
    kronos_service, database_url, instance, conn
):
    result = _materialize(instance, database_url, url=kronos_service.url, token="t0ken")

    assert result.success
    [request] = kronos_service.requests
    assert request.path == "/batch"
    assert request.body == {
        "timeframe": "1d", "window_start": "2025-06-02T00:00:00+00:00", "window_end": "2025-06-03T00:00:00+00:00",
    }
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert request.gpu_lock_free is False
    metadata = result.asset_materializations_for_node(ASSET)[0].metadata
    assert metadata["status"].value == 200
    assert metadata["kronos_rows_written"].value == 23
    assert metadata["gpu_lock_acquired"].value is True
    assert metadata["service"].value == kronos_service.url
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    # Released afterwards: the next GPU user gets it at once.
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0] is True
    conn.execute("SELECT pg_advisory_unlock(%s)", (GPU_LOCK_KEY,))


def test_when_kronos_answers_an_error_then_the_run_fails_naming_the_service_and_status_but_no_secret(
    kronos_service, database_url, instance
):
    kronos_service.status, kronos_service.answer, kronos_service.rows = 503, '{"error": "GPU busy"}', 0
    url = f"http://kronos:pa55word@127.0.0.1:{kronos_service.port}/batch?key=qu3ry"

    result = _materialize(instance, database_url, url=url)

    assert not result.success
    message = user_error(result, ASSET)
    assert f"http://127.0.0.1:{kronos_service.port}/batch answered 503" in message
    assert "GPU busy" in message
    # The URL's user and password reached the service as Basic auth, and nowhere else.
    assert kronos_service.requests[0].headers["Authorization"] == "Basic a3Jvbm9zOnBhNTV3b3Jk"
    stored = event_text(instance, result)
    for secret in ("pa55word", "qu3ry", "a3Jvbm9zOnBhNTV3b3Jk"):
        assert secret not in stored


def test_when_kronos_does_not_answer_in_time_then_the_run_fails_saying_the_batch_may_still_run(
    kronos_service, database_url, instance
):
    kronos_service.delay_s = 3.0

    result = _materialize(instance, database_url, url=kronos_service.url, timeout_s=0.5)

    assert not result.success
    assert "did not answer within 0.5 s" in user_error(result, ASSET)


def test_when_kronos_is_unreachable_then_the_run_fails_naming_the_service(kronos_service, database_url, instance):
    url = kronos_service.url
    kronos_service.close()

    result = _materialize(instance, database_url, url=url)

    assert not result.success
    assert f"{describe_url(url)} is unreachable" in user_error(result, ASSET)


def test_when_the_batch_writes_no_rows_then_the_check_warns_and_the_run_succeeds(kronos_service, database_url, instance):
    kronos_service.status, kronos_service.rows = 202, 0

    result = _materialize(instance, database_url, url=kronos_service.url)

    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["kronos_rows_written"].value == 0


def test_when_another_gpu_user_holds_the_lock_past_the_timeout_then_kronos_is_triggered_anyway(
    kronos_service, database_url, instance, conn
):
    conn.autocommit = True
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0]

    result = _materialize(instance, database_url, url=kronos_service.url, lock_timeout_s=0.3)

    assert result.success
    assert len(kronos_service.requests) == 1
    assert result.asset_materializations_for_node(ASSET)[0].metadata["gpu_lock_acquired"].value is False
    conn.execute("SELECT pg_advisory_unlock(%s)", (GPU_LOCK_KEY,))


def test_when_the_lock_database_is_unreachable_then_kronos_is_triggered_anyway_and_the_record_says_why(
    kronos_service, database_url, instance
):
    unreachable = "postgresql://kronos:pa55word@127.0.0.1:1/locks"

    result = _materialize(instance, database_url, url=kronos_service.url, lock_database_url=unreachable)

    assert result.success
    assert len(kronos_service.requests) == 1
    metadata = result.asset_materializations_for_node(ASSET)[0].metadata
    assert metadata["gpu_lock_acquired"].value is False
    assert metadata["gpu_lock"].value == "not taken: its database 127.0.0.1:1/locks is unreachable"
    assert metadata["kronos_rows_written"].value == 23
    assert "pa55word" not in event_text(instance, result)


def test_when_the_database_is_unreachable_then_kronos_is_triggered_anyway_and_its_rows_are_not_counted(
    kronos_service, database_url, instance
):
    unreachable = "postgresql://127.0.0.1:1/forecasting"
    kronos_service.rows = 0

    result = _materialize(instance, unreachable, url=kronos_service.url,
                          database=PostgresResource(url=unreachable, connect_attempts=1))

    assert result.success
    assert len(kronos_service.requests) == 1
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["kronos_rows_written"].value == "not counted: the database was unreachable"


@pytest.fixture
def definitions_with_kronos(monkeypatch):
    """The code location as it loads with KRONOS_BATCH_URL set; reloaded without it afterwards."""
    import forecasting_pipeline.definitions as definitions

    monkeypatch.setenv("KRONOS_BATCH_URL", "http://kronos.internal:8000/batch")
    try:
        yield importlib.reload(definitions).defs
    finally:
        monkeypatch.delenv("KRONOS_BATCH_URL")
        importlib.reload(definitions)


def test_when_no_kronos_url_is_set_then_the_code_location_has_no_kronos_batch_assets():
    from forecasting_pipeline.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}

    # Only Kronos's rows, which the ensemble observes whether or not Dagster triggers Kronos.
    assert {k for k in keys if k.startswith("kronos")} == {"kronos_base_1h", "kronos_base_1d"}


def test_when_a_kronos_url_is_set_then_each_cadence_has_a_kronos_asset_in_the_gpu_pool_with_a_stopped_schedule(
    definitions_with_kronos,
):
    defs = definitions_with_kronos

    for cadence in ("1h", "1d"):
        asset = defs.resolve_assets_def(f"kronos_predictions_{cadence}")
        assert asset.op.pool == GPU_POOL
        assert defs.resolve_job_def(f"kronos_{cadence}_job").executor_def is dg.in_process_executor
        schedule = defs.resolve_schedule_def(f"kronos_{cadence}_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_schedule_def("kronos_1h_schedule").cron_schedule == "55 * * * *"
    assert defs.resolve_schedule_def("kronos_1d_schedule").cron_schedule == "45 5 * * *"
    # The URL may hold credentials: it comes from the environment at run time, never from the code.
    url = defs.resources["kronos_batch"].url
    assert isinstance(url, dg.EnvVar) and url.env_var_name == "KRONOS_BATCH_URL"
