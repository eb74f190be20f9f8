"""A run's batch through the forecast service (``forecasting-pipeline serve``) over its Unix socket, in bounded time.

The client speaks the service's own HTTP API (``POST /runs/forecast``, body in ``batch_wire``'s
format). Every step has a limit: connecting and each read wait at most ``timeout_s``. The service
sends a heartbeat frame every few seconds while a batch waits or works, so a long batch never
reaches the read timeout, and a service that stops answering does. Readiness is asked first: a
service whose model failed to load says so at once.

``ServiceUnavailable`` means the run can load the model itself (nothing answered in time, the
service is not ready or is overloaded); ``ServiceRefused`` means the service answered that this
batch is wrong (another model, a malformed body) or failed on it, which the run reports.
"""

from __future__ import annotations

import http.client
import json
import socket

from forecasting_pipeline.forecasting.batch_wire import (
    MEDIA_TYPE,
    WireError,
    decode_npz,
    encode_inputs,
    encode_npz,
    read_frames,
)
from forecasting_pipeline.forecasting.device import DeviceRun
from forecasting_pipeline.forecasting.model import ModelIdentity
from forecasting_pipeline.forecasting.runner import Prediction

RUNS_PATH = "/runs/forecast"
RUNS_MODEL_PATH = "/runs/model"
DEFAULT_TIMEOUT_S = 30.0


class ServiceUnavailable(ConnectionError):
    """No forecast service can take the batch now: the run loads the model itself (the message says why)."""


class ServiceRefused(RuntimeError):
    """The forecast service answered, refusing or failing this batch (the message says why)."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: connecting and each read wait at most ``timeout_s``."""

    def __init__(self, socket_path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def readiness(socket_path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """The service's ``/readyz`` answer when it is ready; ServiceUnavailable otherwise, saying why."""
    status, body = _exchange(socket_path, timeout_s, "GET", "/readyz")
    answer = _json(body)
    if status != 200:
        raise ServiceUnavailable(f"the forecast service at {socket_path} is not ready: {answer.get('reason', status)}")
    return answer


def served_model(socket_path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """The model the service at ``socket_path`` runs (``model``, ``revision``, ``dtype``, ``model_version``)."""
    status, body = _exchange(socket_path, timeout_s, "GET", RUNS_MODEL_PATH)
    answer = _json(body)
    if status != 200:
        raise ServiceUnavailable(f"the forecast service at {socket_path} did not say what it runs: "
                                 f"{answer.get('reason') or answer.get('errors') or status}")
    return answer


def service_forecast(
    socket_path: str, key: dict, inputs: list[dict], horizon: int, context_length: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Prediction:
    """Quantiles of every input from the service at ``socket_path``, as ``Chronos2Runner.predict_here`` gives them."""
    readiness(socket_path, timeout_s)
    names, arrays = encode_inputs(inputs)
    body = encode_npz({**key, "horizon": horizon, "context_length": context_length, "covariates": names}, arrays)
    status, payload = _exchange(socket_path, timeout_s, "POST", RUNS_PATH, body)
    if status != 200:
        reason = "; ".join(e.get("reason", "") for e in _json(payload).get("errors", [])) or f"status {status}"
        if status == 503:
            raise ServiceUnavailable(f"the forecast service at {socket_path} cannot take the batch now: {reason}")
        raise ServiceRefused(f"the forecast service at {socket_path} refused the batch ({status}): {reason}")
    try:
        header, out = decode_npz(payload)
    except WireError as exc:
        raise ServiceUnavailable(f"the forecast service at {socket_path} sent an unreadable answer: {exc}") from None
    if not header.get("ok"):
        raise ServiceRefused(f"the forecast service at {socket_path} failed the batch: {header.get('reason', 'no reason given')}")
    return Prediction(
        quantiles=out["quantiles"], model=ModelIdentity(**header["model"]), timings=header["timings"],
        device_run=DeviceRun.from_json(header["device_run"]),
    )


def _exchange(socket_path: str, timeout_s: float, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; a streamed answer's last frame is its body. ServiceUnavailable on any failure to talk."""
    conn = _UnixConnection(socket_path, timeout_s)
    try:
        headers = {"Content-Type": MEDIA_TYPE} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        if response.status == 200 and response.getheader("Content-Type", "").startswith("application/x-npz-frames"):
            last = b""
            for payload in read_frames(response):
                last = payload
            return response.status, last
        return response.status, response.read()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ServiceUnavailable(f"no forecast service at {socket_path}: {exc.strerror or exc}") from None
    except TimeoutError:
        raise ServiceUnavailable(f"the forecast service at {socket_path} did not answer within {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException, WireError) as exc:
        raise ServiceUnavailable(f"the forecast service at {socket_path} broke off: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _json(body: bytes) -> dict:
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
