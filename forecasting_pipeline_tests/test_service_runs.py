"""Runs through the forecast service: a real `forecasting-pipeline serve` (conftest.py) answers their batches on its
Unix socket, through the same HTTP application as on-demand requests; runs are real Dagster materialisations
against the real database. A service that cannot help (none there, its model failed to load, it stopped answering)
costs a run a bounded wait, after which the run loads the model itself and says why.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forecasting_pipeline.forecasting.model import checkpoint_digest, load_chronos2
from forecasting_pipeline.forecasting.batch_wire import HEARTBEAT, MEDIA_TYPE, encode_npz, model_key
from forecasting_pipeline.forecasting.service_client import (
    ServiceRefused,
    ServiceUnavailable,
    _UnixConnection,
    readiness,
)
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.resources import Chronos2Resource
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline.storage.model_registry import NewCheckpoint, promote, register
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS, free_port, start_service, stop_service

HORIZON = 10
CONTEXT = 64  # the daily_inputs fixture's length (conftest.py)


def _served(resource: Chronos2Resource, socket_path: str, **changes) -> Chronos2Resource:
    return Chronos2Resource(**{**resource.model_dump(), "server_socket": socket_path, **changes})


def _bulk(service, name: str, sample: str) -> float:
    _status, text, _headers = service.get("/metrics")
    return sum(
        s.value for family in text_string_to_metric_families(text) if family.name == name
        for s in family.samples if s.name == sample and s.labels.get("lane") == "bulk"
    )


def _unix(socket_path: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request on the Unix socket, as a run's client sends it (no token)."""
    conn = _UnixConnection(socket_path, 30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_when_a_run_forecasts_through_the_service_then_it_gets_what_the_model_gives_in_process_in_chunks(
    service, tiny_checkpoint, daily_inputs
):
    here = Chronos2Resource(model=str(tiny_checkpoint), device="cpu")
    inputs = daily_inputs * 7  # 161 series of 64 bars: chunks of 1024 // 64 = 16 series on the CPU
    chunks_before = _bulk(service, "forecast_model_calls", "forecast_model_calls_total")

    done = _served(here, service.socket).runner().predict(inputs, HORIZON, CONTEXT)
    local = here.runner().predict(inputs, HORIZON, CONTEXT)

    np.testing.assert_array_equal(done.quantiles, local.quantiles)
    assert done.model == local.model
    assert done.device_run.model_process == f"forecast service pid {service.process.pid} at {service.socket}"
    assert (done.device_run.device, done.device_run.reason) == ("cpu", "device=cpu configured")
    assert local.device_run.model_process == "this run"
    assert done.timings["predict_seconds"] > 0
    assert _bulk(service, "forecast_model_calls", "forecast_model_calls_total") == chunks_before + 11


def test_when_the_chain_runs_with_the_service_then_its_rows_are_stored_and_say_where_the_model_ran(
    service, resources, instance, conn
):
    resources = {**resources, "chronos2": _served(resources["chronos2"], service.socket)}
    series_before = _bulk(service, "forecast_model_call_series", "forecast_model_call_series_sum")

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)

    assert result.success
    assert read_predictions(conn, "1d")["symbol"].n_unique() == 23
    metadata = result.asset_materializations_for_node("chronos2_forecasts_1d")[0].metadata
    assert metadata["model_process"].value == f"forecast service pid {service.process.pid} at {service.socket}"
    assert metadata["model_version"].value.endswith("RANDOM-WEIGHTS")
    # The same process that answers HTTP ran the run's batch, and counted its 23 series.
    assert _bulk(service, "forecast_model_call_series", "forecast_model_call_series_sum") == series_before + 23


def test_when_the_unix_socket_is_used_then_no_token_is_needed_and_its_mode_is_0600(service):
    assert oct(os.stat(service.socket).st_mode & 0o777) == oct(0o600)
    assert _unix(service.socket, "GET", "/metrics")[0] == 200
    assert service.token is not None and _unix(service.socket, "GET", "/openapi.json")[0] == 200


def test_when_no_service_answers_then_the_run_loads_the_model_itself_and_says_why(
    tiny_checkpoint, daily_inputs, tmp_path, caplog
):
    missing = str(tmp_path / "nobody.sock")
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=missing)

    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT)

    assert done.quantiles.shape == (23, HORIZON, 3)
    assert done.device_run.model_process.startswith(f"this run (no forecast service at {missing}")
    assert f"no forecast service at {missing}" in caplog.text


def test_when_the_service_runs_another_model_then_the_run_fails_naming_both_and_the_service_goes_on(
    service, tiny_checkpoint, daily_inputs
):
    wants_bf16 = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", dtype="bfloat16", server_socket=service.socket)

    with pytest.raises(ServiceRefused, match=r"\(409\): this service runs .*'auto'.*the run asked for .*'bfloat16'"):
        wants_bf16.runner().predict(daily_inputs, HORIZON, CONTEXT)

    assert readiness(service.socket)["pid"] == service.process.pid


@pytest.mark.parametrize("body, reason", [
    (b"{not an npz", "the body is not an .npz of plain arrays"),
    (encode_npz({"covariates": []}, {"target": np.ones(3)}), "the body lacks array 'lengths'"),
    (encode_npz({"covariates": []}, {"lengths": np.array([5]), "target": np.ones(3)}), "do not hold the 5 values"),
], ids=["not an npz", "no lengths", "lengths do not add up"])
def test_when_a_batch_is_malformed_then_400_says_what_and_the_service_goes_on(service, body, reason):
    status, _headers, answer = _unix(service.socket, "POST", "/runs/forecast", body, {"Content-Type": MEDIA_TYPE})

    assert status == 400
    assert reason in answer.decode()
    assert readiness(service.socket)["pid"] == service.process.pid


def test_when_a_batch_waits_then_its_answer_starts_with_heartbeats_and_ends_with_the_quantiles(service, tiny_checkpoint):
    key = model_key(str(tiny_checkpoint), None, "auto")
    body = encode_npz({**key, "horizon": 3, "context_length": 8, "covariates": []},
                      {"lengths": np.array([8]), "target": np.linspace(1, 2, 8)})

    status, headers, answer = _unix(service.socket, "POST", "/runs/forecast", body, {"Content-Type": MEDIA_TYPE})

    assert status == 200 and headers["content-type"] == "application/x-npz-frames"
    # Heartbeats (empty frames) may come first; the answer is the last frame.
    while answer.startswith(HEARTBEAT):
        answer = answer[len(HEARTBEAT):]
    assert int.from_bytes(answer[:4], "big") == len(answer) - 4


def _serve(socket_path: str) -> list[str]:
    return [sys.executable, "-m", "forecasting_pipeline.cli", "serve", "--port", str(free_port()), "--socket", socket_path]


@pytest.fixture(scope="module")
def broken_service(module_database_url, tmp_path_factory):
    """A real service whose model cannot load: a checkpoint with pickle weights only."""
    checkpoint = tmp_path_factory.mktemp("broken") / "chronos2-pickle"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "pytorch_model.bin").write_bytes(b"not safetensors")
    running = start_service(module_database_url, checkpoint, tmp_path_factory.mktemp("broken-log") / "service.log",
                            wait_ready=False)
    deadline = time.monotonic() + 60
    while "failed to load" not in str(running.get("/readyz")[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield running
    finally:
        running.process.send_signal(signal.SIGCONT)
        stop_service(running)


def test_when_the_services_model_failed_to_load_then_the_run_loads_it_itself_at_once_and_says_why(
    broken_service, tiny_checkpoint, daily_inputs
):
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=broken_service.socket)

    begun = time.monotonic()
    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT)

    assert done.quantiles.shape == (23, HORIZON, 3)
    assert done.device_run.model_process.startswith(
        f"this run (the forecast service at {broken_service.socket} is not ready: the model failed to load: "
        "ModelUnavailableError:")
    assert time.monotonic() - begun < 30


def test_when_the_service_stops_answering_then_the_run_gives_up_within_its_timeout_and_loads_the_model_itself(
    broken_service, tiny_checkpoint, daily_inputs
):
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=broken_service.socket,
                                server_timeout_s=1.5)
    broken_service.process.send_signal(signal.SIGSTOP)  # alive, its socket accepting, but answering nothing
    try:
        begun = time.monotonic()
        done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT)
        waited = time.monotonic() - begun
    finally:
        broken_service.process.send_signal(signal.SIGCONT)

    assert done.quantiles.shape == (23, HORIZON, 3)
    assert done.device_run.model_process == (
        f"this run (the forecast service at {broken_service.socket} did not answer within 1.5s)")
    assert 1.5 <= waited < 15


def test_when_the_socket_is_taken_then_a_second_service_refuses_to_start(service, server_url, tiny_checkpoint):
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint)}

    second = subprocess.run(_serve(service.socket), env=env, capture_output=True, text=True, timeout=120)

    assert second.returncode == 1
    assert f"a forecast service already listens at {service.socket}" in second.stderr
    assert readiness(service.socket)["pid"] == service.process.pid


def test_when_the_service_is_stopped_then_it_exits_cleanly_and_removes_its_socket(server_url, tiny_checkpoint, tmp_path):
    running = start_service(server_url, tiny_checkpoint, tmp_path / "s.log", wait_ready=False)

    running.process.send_signal(signal.SIGTERM)

    assert running.process.wait(timeout=30) == 0
    assert not os.path.exists(running.socket)
    with pytest.raises(ServiceUnavailable, match="no forecast service at"):
        readiness(running.socket, 1)


def test_when_the_socket_path_is_a_file_then_the_service_refuses_to_start_and_leaves_it(
    server_url, tiny_checkpoint, tmp_path
):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint)}

    refused = subprocess.run(_serve(str(precious)), env=env, capture_output=True, text=True, timeout=120)

    assert refused.returncode != 0
    assert f"{precious} exists and is not a socket" in refused.stderr
    assert precious.read_text() == "keep me"


def test_when_the_runs_champion_is_not_what_the_service_runs_then_the_run_loads_it_itself_and_says_so(
    service, tiny_checkpoint, daily_inputs, conn, database_url, tmp_path, caplog
):
    copy = tmp_path / "champion"
    shutil.copytree(tiny_checkpoint, copy)
    loaded = load_chronos2(str(copy))
    found, _ = register(conn, NewCheckpoint(
        "1d", checkpoint_digest(copy), loaded.version, str(copy), "base", "r", "base@r", "full",
        datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 6, 1, tzinfo=timezone.utc), 10, ["AAPL"], 1, 1e-3,
        8, 64, 10, 0, None, "cpu", 0.1))
    served = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=service.socket,
                              registry_database_url=database_url)
    # No champion yet: the configured model is the service's, so the run keeps the service.
    assert served.runner("1d").server_socket == service.socket

    promote(conn, "1d", found.id, "a test", {}, forced=True)
    runner = served.runner("1d")
    done = runner.predict(daily_inputs, HORIZON, CONTEXT)

    assert (runner.model, runner.server_socket) == (str(copy), None)
    assert done.model.version == loaded.version and done.device_run.model_process == "this run"
    assert "restart `forecasting-pipeline serve` with SERVE_CADENCE=1d" in caplog.text
