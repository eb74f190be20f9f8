"""The binary body of a run's batch to the forecast service (``POST /runs/forecast``) and of its answer.

A run sends thousands of series: as JSON they would cost more to write and parse than the model
call on a GPU. So the request body is one ``.npz`` (read with ``allow_pickle=False``: no pickle)
holding one array per variate, the series' lengths beside them, and a JSON header as a 0-d string
array. A backfill's series overlap almost entirely (each window's context is its neighbour's
shifted by a bar) and are views of one array per instrument: each such array is sent once, and
``<variate>_starts`` says where each series starts in the variate's array. Without
``_starts``, the series lie end to end.

The answer streams ``frames``: a 4-byte big-endian length, then that many bytes of ``.npz``. A
frame of length 0 is a heartbeat, sent while the batch waits or works, so that a client can tell a
busy service from one that stopped answering with a read timeout shorter than the batch. The last
frame holds ``quantiles`` and a JSON header: ``{"ok": true, ...}`` or ``{"ok": false, "status",
"reason"}``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

MEDIA_TYPE = "application/x-npz"
FRAMES_MEDIA_TYPE = "application/x-npz-frames"
HEARTBEAT = b"\x00\x00\x00\x00"
_LENGTH = struct.Struct(">I")


class WireError(ValueError):
    """A body that is not in this format; the message says what is wrong."""


def model_key(model: str, revision: str | None, dtype: str) -> dict[str, str | None]:
    """What must match between a run's settings and the service's (a local path compares resolved)."""
    path = Path(model)
    return {"model": str(path.resolve()) if path.is_dir() else model, "revision": revision, "dtype": dtype}


def encode_npz(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    body = io.BytesIO()
    np.savez(body, header=np.array(json.dumps(header)), **(arrays or {}))
    return body.getvalue()


def decode_npz(payload: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and arrays of one ``.npz``; WireError when it is anything else."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise WireError(f"the body is not an .npz of plain arrays: {exc}") from None
    raw = arrays.pop("header", None)
    try:
        header = json.loads(str(raw)) if raw is not None and raw.shape == () else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise WireError("the body's .npz has no JSON object named 'header'")
    return header, arrays


def encode_inputs(inputs: list[dict]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Model inputs (``forecasting.inputs``) as their covariate names and a few flat arrays.

    One model call takes one set of covariates, so every series must have the same names.
    """
    names = list(inputs[0].get("past_covariates", {})) if inputs else []
    for i, series in enumerate(inputs):
        if list(series.get("past_covariates", {})) != names:
            raise ValueError(f"series {i} has covariates {list(series.get('past_covariates', {}))}, the first {names}")
    arrays = {"lengths": np.array([len(series["target"]) for series in inputs], dtype=np.int64)}
    variates = {"target": [series["target"] for series in inputs]}
    for j, name in enumerate(names):
        variates[f"covariate_{j}"] = [series["past_covariates"][name] for series in inputs]
    for variate, values in variates.items():
        arrays[variate], arrays[f"{variate}_starts"] = _shared(values)
    return names, arrays


def decode_inputs(covariate_names: list[str], arrays: dict[str, np.ndarray]) -> list[dict]:
    """The inputs ``encode_inputs`` sent; WireError when the arrays do not add up."""
    try:
        lengths, target = arrays["lengths"], arrays["target"]
        covariates = [arrays[f"covariate_{j}"] for j in range(len(covariate_names))]
    except KeyError as exc:
        raise WireError(f"the body lacks array {exc}") from None
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or any(a.ndim != 1 or a.dtype.kind != "f" for a in (target, *covariates)):
        raise WireError("lengths must be a 1-d integer array, target and covariates 1-d float arrays")
    if (lengths < 1).any():
        raise WireError("every series must have at least one value")
    names = ["target", *(f"covariate_{j}" for j in range(len(covariate_names)))]
    starts = [_starts(name, values, lengths, arrays) for name, values in zip(names, (target, *covariates))]
    ends = [(s + lengths).tolist() for s in starts]
    starts = [s.tolist() for s in starts]
    return [
        {"target": target[starts[0][i]:ends[0][i]], "past_covariates": {
            name: values[starts[j + 1][i]:ends[j + 1][i]] for j, (name, values) in enumerate(zip(covariate_names, covariates))
        }}
        for i in range(len(lengths))
    ]


def _starts(name: str, values: np.ndarray, lengths: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Where each series of ``values`` starts: ``<name>_starts`` when sent (checked), else end to end."""
    given = arrays.get(f"{name}_starts")
    if given is None:
        total = int(lengths.sum())
        if len(values) != total:
            raise WireError(f"the body's arrays do not hold the {total} values its lengths add up to")
        return np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    if given.ndim != 1 or given.dtype.kind not in "iu" or len(given) != len(lengths):
        raise WireError(f"{name}_starts must be a 1-d integer array with one start per series")
    if (given < 0).any() or (given + lengths > len(values)).any():
        raise WireError(f"{name}_starts places a series outside the {len(values)} values of {name}")
    return given.astype(np.int64)


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def read_frames(stream: BinaryIO, max_bytes: int = 1 << 31) -> Iterator[bytes]:
    """Each non-empty frame's payload (heartbeats are skipped); WireError on a truncated or oversized frame."""
    while True:
        head = stream.read(_LENGTH.size)
        if not head:
            return
        if len(head) < _LENGTH.size:
            raise WireError("the answer ended inside a frame's length")
        (length,) = _LENGTH.unpack(head)
        if length == 0:
            continue
        if length > max_bytes:
            raise WireError(f"a frame of {length} bytes exceeds {max_bytes}")
        payload = stream.read(length)
        if len(payload) < length:
            raise WireError(f"the answer ended {length - len(payload)} bytes into a frame of {length}")
        yield payload


def _shared(values: list) -> tuple[np.ndarray, np.ndarray]:
    """The series' distinct arrays once, end to end, and where each series starts in them.

    A series that is a contiguous view of a 1-d array (``inputs.window_model_inputs`` makes them
    so) is found in that array, which is sent once however many series it holds; any other
    series is sent as it is.
    """
    pieces: list[np.ndarray] = []
    placed: dict[int, int] = {}  # id of a base array -> where it starts in the joined array
    starts: list[int] = []
    total = 0
    for value in values:
        value = np.asarray(value)
        base = value.base
        if not (isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == value.dtype
                and base.flags.c_contiguous and value.ndim == 1 and value.flags.c_contiguous):
            pieces.append(value)
            starts.append(total)
            total += len(value)
            continue
        if id(base) not in placed:
            placed[id(base)] = total
            pieces.append(base)
            total += len(base)
        offset = (value.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // value.itemsize
        starts.append(placed[id(base)] + offset)
    joined = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.float32)
    return joined, np.array(starts, dtype=np.int64)
