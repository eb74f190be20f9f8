"""The model server: runs forecast through one long-lived process that keeps Chronos-2 loaded.

A real `forecasting-pipeline serve` process (conftest.py) serves the tiny checkpoint over its Unix
socket, beside its HTTP side; runs are real Dagster materialisations against the real database.
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import pytest

from forecasting_pipeline.forecasting.model import checkpoint_digest, load_chronos2
from forecasting_pipeline.forecasting.model_server import ModelServerError, describe
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.resources import Chronos2Resource
from forecasting_pipeline.storage.ml_predictions import read_predictions
from forecasting_pipeline.storage.model_registry import NewCheckpoint, promote, register
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS, free_port

HORIZON = 10
CONTEXT = 64  # the daily_inputs fixture's length (conftest.py)


def _served(resource: Chronos2Resource, socket_path: str) -> Chronos2Resource:
    return Chronos2Resource(**{**resource.model_dump(), "server_socket": socket_path})


def test_when_a_run_forecasts_through_the_server_then_it_gets_what_the_model_gives_in_process(
    model_server, tiny_checkpoint, daily_inputs
):
    here = Chronos2Resource(model=str(tiny_checkpoint), device="cpu")
    served_before = describe(model_server.socket)["served"]

    done = _served(here, model_server.socket).runner().predict(daily_inputs, HORIZON, CONTEXT)
    quantiles, model, timings, record = done.quantiles, done.model, done.timings, done.device_run
    local_done = here.runner().predict(daily_inputs, HORIZON, CONTEXT)
    expected, expected_model, _, local = local_done.quantiles, local_done.model, local_done.timings, local_done.device_run

    np.testing.assert_array_equal(quantiles, expected)
    assert model == expected_model
    assert record.model_process == f"model server pid {model_server.process.pid} at {model_server.socket}"
    assert local.model_process == "this run"
    assert timings["predict_seconds"] > 0
    assert describe(model_server.socket)["served"] == served_before + 1


def test_when_the_chain_runs_with_a_server_then_its_rows_are_stored_and_say_where_the_model_ran(
    model_server, resources, instance, conn
):
    resources = {**resources, "chronos2": _served(resources["chronos2"], model_server.socket)}
    socket_calls_before = _socket_calls(model_server)

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)

    assert result.success
    assert read_predictions(conn, "1d")["symbol"].n_unique() == 23
    metadata = result.asset_materializations_for_node("chronos2_forecasts_1d")[0].metadata
    assert metadata["model_process"].value.startswith(f"model server pid {model_server.process.pid}")
    assert metadata["model_version"].value.endswith("RANDOM-WEIGHTS")
    # The same process that answers HTTP ran the run's batch, and counted it.
    assert _socket_calls(model_server) == socket_calls_before + 1


def _socket_calls(service) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _status, text, _headers = service.get("/metrics")
    return sum(
        sample.value for family in text_string_to_metric_families(text) if family.name == "forecast_model_calls"
        for sample in family.samples if sample.name.endswith("_total") and sample.labels["source"] == "socket"
    )


def _serve(socket_path: str) -> list[str]:
    return [sys.executable, "-m", "forecasting_pipeline.cli", "serve", "--port", str(free_port()), "--socket", socket_path]


def test_when_no_server_answers_then_the_run_loads_the_model_itself_and_says_why(
    tiny_checkpoint, daily_inputs, tmp_path, caplog
):
    missing = str(tmp_path / "nobody.sock")
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=missing)

    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT)
    quantiles, _model, _timings, record = done.quantiles, done.model, done.timings, done.device_run

    assert quantiles.shape == (23, HORIZON, 3)
    assert record.model_process.startswith(f"this run (no model server at {missing}")
    assert f"no model server at {missing}" in caplog.text


def test_when_the_server_runs_another_model_then_the_run_fails_naming_both_and_the_server_goes_on(
    model_server, tiny_checkpoint, daily_inputs
):
    wants_bf16 = Chronos2Resource(
        model=str(tiny_checkpoint), device="cpu", dtype="bfloat16", server_socket=model_server.socket
    )

    with pytest.raises(ModelServerError, match=r"this server runs .*'float32'.*the run asked for .*'bfloat16'"):
        wants_bf16.runner().predict(daily_inputs, HORIZON, CONTEXT)

    assert describe(model_server.socket)["pid"] == model_server.process.pid


def test_when_a_request_is_malformed_then_the_server_refuses_it_and_keeps_serving(model_server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(model_server.socket)
        garbage = b"{not json"
        client.sendall(struct.pack(">Q", len(garbage)) + garbage)
        reply = client.recv(4096)

    assert b"malformed request: header is not JSON" in reply
    assert describe(model_server.socket)["pid"] == model_server.process.pid


def test_when_the_socket_is_taken_then_a_second_server_refuses_to_start(model_server, server_url, tiny_checkpoint):
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint)}

    second = subprocess.run(
        _serve(model_server.socket), env=env, capture_output=True, text=True, timeout=120,
    )

    assert second.returncode != 0
    assert f"a model server already listens at {model_server.socket}" in second.stderr
    assert describe(model_server.socket)["pid"] == model_server.process.pid


def test_when_the_server_is_stopped_then_it_removes_its_socket(server_url, tiny_checkpoint, tmp_path):
    socket_path = str(tmp_path / "s.sock")
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint), "CHRONOS2_DEVICE": "cpu"}
    server = subprocess.Popen(_serve(socket_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        describe(socket_path, wait_s=120)
        assert oct(os.stat(socket_path).st_mode & 0o777) == oct(0o600)

        server.send_signal(signal.SIGTERM)

        assert server.wait(timeout=30) == 0
        assert not os.path.exists(socket_path)
    finally:
        if server.poll() is None:  # a failed step above must not leave the server running
            server.kill()
            server.wait()


def test_when_the_socket_path_is_a_file_then_the_server_refuses_to_start_and_leaves_it(
    server_url, tiny_checkpoint, tmp_path
):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint)}

    refused = subprocess.run(
        _serve(str(precious)), env=env, capture_output=True, text=True, timeout=120,
    )

    assert refused.returncode != 0
    assert f"{precious} exists and is not a socket" in refused.stderr
    assert precious.read_text() == "keep me"


def test_when_the_runs_champion_is_not_what_the_server_runs_then_the_run_loads_it_itself_and_says_so(
    model_server, tiny_checkpoint, daily_inputs, conn, database_url, tmp_path, caplog
):
    copy = tmp_path / "champion"
    shutil.copytree(tiny_checkpoint, copy)
    loaded = load_chronos2(str(copy))
    found, _ = register(conn, NewCheckpoint(
        "1d", checkpoint_digest(copy), loaded.version, str(copy), "base", "r", "base@r", "full",
        datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 6, 1, tzinfo=timezone.utc), 10, ["AAPL"], 1, 1e-3,
        8, 64, 10, 0, None, "cpu", 0.1))
    served = Chronos2Resource(model=str(tiny_checkpoint), device="cpu", server_socket=model_server.socket,
                              registry_database_url=database_url)
    # No champion yet: the configured model is the server's, so the run keeps the server.
    assert served.runner("1d").server_socket == model_server.socket

    promote(conn, "1d", found.id, "a test", {}, forced=True)
    runner = served.runner("1d")
    done = runner.predict(daily_inputs, HORIZON, CONTEXT)

    assert (runner.model, runner.server_socket) == (str(copy), None)
    assert done.model.version == loaded.version and done.device_run.model_process == "this run"
    assert "restart `forecasting-pipeline serve` with SERVE_CADENCE=1d" in caplog.text
