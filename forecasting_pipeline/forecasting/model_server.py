"""The model server's socket: runs send their batch to the long-lived forecast service that keeps Chronos-2 loaded.

Without it each run of a chain imports torch, transformers and chronos and loads the checkpoint
before its first forecast, which costs more than the whole daily batch on a GPU (README:
Performance). The service (``forecasting-pipeline serve``) pays that once and answers here as well
as over HTTP. A run (``Chronos2Runner`` with ``server_socket`` set) sends its batch over a Unix
socket and gets the quantiles back; when no server answers, the run loads the model itself, as it
would without one.

Placement does not change: the server runs each request through the same
``Chronos2Runner.predict_here`` a run uses, so the GPU advisory lock, the free-memory test, the
CPU fallback and the release of CUDA memory after each batch (device.py) apply per request. Only the
CPU copy of the model, and the imports, stay warm. Requests are served one at a time.

Wire format, both ways: an 8-byte big-endian length and a UTF-8 JSON header, then an 8-byte length
and an ``.npz`` payload, read with ``allow_pickle=False``. The socket is made mode 0600, so only the
user who started the server can send it work.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forecasting_pipeline.forecasting.device import DeviceRun
from forecasting_pipeline.forecasting.model import ModelIdentity
from forecasting_pipeline.forecasting.runner import Prediction

if TYPE_CHECKING:
    from forecasting_pipeline.forecasting.runner import Chronos2Runner

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 20
# Large enough for an hourly backfill run's inputs (120 windows x 69 series x 2048 float32 values).
MAX_PAYLOAD_BYTES = 1 << 31
CONNECT_TIMEOUT_S = 5.0
IDLE_CLIENT_TIMEOUT_S = 30.0


class ModelServerUnavailable(ConnectionError):
    """No model server answers at the socket: the run loads the model itself."""


class ModelServerError(RuntimeError):
    """The model server answered, but with an error (its message says which)."""


class ProtocolError(ValueError):
    """A message that is not in the wire format."""


class SocketPathTaken(RuntimeError):
    """The socket path is a file, or another model server listens there."""


# ---------------------------------------------------------------- wire format


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed with {left} of {n} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_message(sock: socket.socket, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    head = json.dumps(header).encode()
    body = io.BytesIO()
    np.savez(body, **(arrays or {}))
    payload = body.getvalue()
    sock.sendall(_LENGTH.pack(len(head)) + head + _LENGTH.pack(len(payload)))
    sock.sendall(payload)


def receive_message(sock: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    """One message; EOFError when the peer closed before it, ProtocolError when it is malformed."""
    (head_len,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exactly(sock, head_len))
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    (payload_len,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD_BYTES}")
    payload = _read_exactly(sock, payload_len)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError) as exc:
        raise ProtocolError(f"payload is not an .npz of plain arrays: {exc}") from None
    return header, arrays


def encode_inputs(inputs: list[dict]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Model inputs (``forecasting.inputs``) as their covariate names and a few flat arrays.

    One array per variate holds every series end to end, with the series' lengths beside them: a
    backfill run sends thousands of series, and an archive entry per series costs more to write
    and read than the values themselves. One model call takes one set of covariates, so every
    series must have the same names.
    """
    names = list(inputs[0].get("past_covariates", {})) if inputs else []
    for i, series in enumerate(inputs):
        if list(series.get("past_covariates", {})) != names:
            raise ValueError(f"series {i} has covariates {list(series.get('past_covariates', {}))}, the first {names}")
    arrays = {
        "lengths": np.array([len(series["target"]) for series in inputs], dtype=np.int64),
        "target": _joined([series["target"] for series in inputs]),
    }
    for j, name in enumerate(names):
        arrays[f"covariate_{j}"] = _joined([series["past_covariates"][name] for series in inputs])
    return names, arrays


def decode_inputs(covariate_names: list[str], arrays: dict[str, np.ndarray]) -> list[dict]:
    """The inputs ``encode_inputs`` sent; ProtocolError when the arrays do not add up."""
    try:
        lengths, target = arrays["lengths"], arrays["target"]
        covariates = [arrays[f"covariate_{j}"] for j in range(len(covariate_names))]
    except KeyError as exc:
        raise ProtocolError(f"payload lacks array {exc}") from None
    total = int(lengths.sum()) if len(lengths) else 0
    if (lengths < 0).any() or any(len(values) != total for values in (target, *covariates)):
        raise ProtocolError(f"payload's arrays do not hold the {total} values its lengths add up to")
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return [
        {"target": target[a:b], "past_covariates": {name: values[a:b] for name, values in zip(covariate_names, covariates)}}
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
    ]


def _joined(values: list) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in values]) if values else np.empty(0, dtype=np.float32)


def model_key(model: str, revision: str | None, dtype: str) -> dict[str, str | None]:
    """What must match between a run's settings and the server's (a local path compares resolved)."""
    path = Path(model)
    return {"model": str(path.resolve()) if path.is_dir() else model, "revision": revision, "dtype": dtype}


# ---------------------------------------------------------------- client


def request_forecast(
    socket_path: str, key: dict, inputs: list[dict], horizon: int, context_length: int
) -> Prediction:
    """Send one batch to the model server at ``socket_path`` and wait for its quantiles.

    Raises ModelServerUnavailable when nothing listens there (the caller may run the model
    itself), and ModelServerError when the server refuses or fails the batch.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError, PermissionError) as exc:
            raise ModelServerUnavailable(f"no model server at {socket_path}: {exc.strerror or exc}") from None
        # A CPU backfill batch takes minutes: wait as long as the server works.
        sock.settimeout(None)
        names, arrays = encode_inputs(inputs)
        request = {"op": "predict", **key, "horizon": horizon, "context_length": context_length, "covariates": names}
        try:
            send_message(sock, request, arrays)
            header, out = receive_message(sock)
        except (EOFError, ConnectionResetError, BrokenPipeError) as exc:
            raise ModelServerError(f"model server at {socket_path} dropped the request: {exc}") from None
    finally:
        sock.close()
    if not header.get("ok"):
        raise ModelServerError(f"model server at {socket_path}: {header.get('error', 'no reason given')}")
    return Prediction(
        quantiles=out["quantiles"],
        model=ModelIdentity(**header["model"]),
        timings=header["timings"],
        device_run=DeviceRun.from_json(header["device_run"]),
    )


def describe(socket_path: str, wait_s: float = 0.0) -> dict:
    """The server's pid, model key and batches served; waits up to ``wait_s`` for it to come up."""
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(socket_path)
            # A server that accepts is up but answers only once its model has loaded: wait out the rest of wait_s.
            sock.settimeout(max(CONNECT_TIMEOUT_S, deadline - time.monotonic()))
            send_message(sock, {"op": "describe"})
            header, _ = receive_message(sock)
            return header
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise ModelServerUnavailable(f"no model server at {socket_path}: {exc.strerror or exc}") from None
            time.sleep(0.1)
        finally:
            sock.close()


# ---------------------------------------------------------------- server

# Runs one batch for a socket request: (inputs, horizon, context_length) -> Prediction.
PredictFn = Callable[[list[dict], int, int], Prediction]


class _Handler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        # Requests are served one at a time: a client that connects and stalls must not hold the rest.
        self.request.settimeout(IDLE_CLIENT_TIMEOUT_S)
        while True:
            try:
                header, arrays = receive_message(self.request)
            except (EOFError, TimeoutError, ConnectionResetError):
                return
            except ProtocolError as exc:
                logger.warning("refused a malformed request: %s", exc)
                send_message(self.request, {"ok": False, "error": f"malformed request: {exc}"})
                return  # the stream may be out of step: the client reconnects
            try:
                reply, out = self.server.answer(header, arrays)
            except Exception as exc:  # noqa: BLE001 - one failed batch must not stop the server
                logger.exception("request failed")
                reply, out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, None
            send_message(self.request, reply, out)


class _UnixServer(socketserver.UnixStreamServer):
    def __init__(self, path: str, runner: Chronos2Runner, predict: PredictFn) -> None:
        self.runner = runner
        self.predict = predict
        self.key = model_key(runner.model, runner.revision, runner.dtype)
        self.served = 0
        super().__init__(path, _Handler)

    def server_bind(self) -> None:
        old = os.umask(0o177)  # the socket is created 0600: no window in which others may connect
        try:
            super().server_bind()
        finally:
            os.umask(old)

    def answer(self, header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray] | None]:
        op = header.get("op")
        if op == "describe":
            return {"ok": True, "pid": os.getpid(), "served": self.served, **self.key}, None
        if op != "predict":
            return {"ok": False, "error": f"unknown op {op!r}"}, None
        wanted = {name: header.get(name) for name in self.key}
        if wanted != self.key:
            return {"ok": False, "error": f"this server runs {self.key}, the run asked for {wanted}"}, None
        inputs = decode_inputs(header.get("covariates") or [], arrays)
        done = self.predict(inputs, int(header["horizon"]), int(header["context_length"]))
        device_run = replace(done.device_run, model_process=f"model server pid {os.getpid()} at {self.server_address}")
        self.served += 1
        reply = {
            "ok": True,
            "model": {"version": done.model.version, "device": done.model.device, "dtype": done.model.dtype},
            "timings": done.timings,
            "device_run": device_run.to_json(),
        }
        return reply, {"quantiles": done.quantiles}


class SocketModelServer:
    """The Unix-socket side of the forecast service: answers runs' batches in a thread of its own.

    ``predict`` runs each batch; the service passes one that queues it behind the HTTP batches on
    the process's single model worker, so a run and an HTTP batch never use the model at once.
    """

    def __init__(self, runner: Chronos2Runner, socket_path: str | Path, predict: PredictFn | None = None) -> None:
        self.path = Path(socket_path)
        claim_socket_path(self.path)
        self._server = _UnixServer(str(self.path), runner, predict or runner.predict_here)
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> int:
        return self._server.served

    def start(self) -> None:
        """Answer requests from now on; connections made before this wait in the listen queue."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="model-socket", daemon=True)
        self._thread.start()
        logger.info("model server socket at %s (pid %d)", self.path, os.getpid())

    def stop(self) -> None:
        """Stop answering, close the socket and remove its file."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
        logger.info("model server socket closed after %d batches", self._server.served)


def claim_socket_path(path: Path) -> None:
    """SocketPathTaken for a path that is a file or where a server listens; a dead server's socket is removed."""
    if path.exists() and not path.is_socket():
        raise SocketPathTaken(f"{path} exists and is not a socket: choose another path for the model server")
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a server that died
        else:
            raise SocketPathTaken(f"a model server already listens at {path}")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
