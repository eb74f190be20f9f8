"""Model inputs: one Chronos-2 input per instrument and window, and the instruments left out before the call.

An input is ``{"target": close, "past_covariates": {name: values}}``, float32, the context the
model reads. An instrument whose context the model cannot take is rejected here, before the
call, because one bad series would spoil the whole batch (``Rejection`` says which and why).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from forecasting_pipeline.market.features import COVARIATE_COLUMNS
from forecasting_pipeline.market.window_frames import WindowFrames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesKey:
    """Which forecast a model input belongs to: a partition window and an instrument."""

    window: str
    symbol: str
    as_of: datetime


@dataclass(frozen=True)
class Rejection:
    """An instrument left out of one window's forecasts, and why.

    ``rule``: ``model_input`` (rejected before the model call), or, for the forecast itself,
    ``horizon`` (wrong step count), ``non_finite`` or ``crossing``.
    """

    window: str
    symbol: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.window}: {self.symbol}: {self.message}"


def _input_problem(frame: pl.DataFrame, wide: dict[str, np.ndarray], narrow: dict[str, np.ndarray]) -> str | None:
    """Why one instrument's context cannot go to the model, or None.

    ``wide`` holds the context's columns as stored (float64), ``narrow`` as the model reads them
    (float32). A finite float64 beyond float32's range (about 3.4e38) becomes infinite there, and
    with chronos-forecasting 2.3.2 one infinite value turns every series of the batch into NaN, so
    the instrument must be left out before the call, not after it.
    """
    for name in ("close", *COVARIATE_COLUMNS):
        bad = ~np.isfinite(narrow[name])
        if not bad.any():
            continue
        overflow = bad & np.isfinite(wide[name])
        if overflow.any():
            i = int(np.argmax(overflow))
            bar = frame["ts"][i].isoformat()
            return f"{name} {wide[name][i]:.6g} at bar {bar} is beyond float32, in which the model computes (max 3.4e38)"
        if name == "close" and bad.all():
            # The model returns values near 0 for an all-NaN target instead of failing.
            return "the close has no finite value in the context"
        return f"non-finite {name} at bar {frame['ts'][int(np.argmax(bad))].isoformat()}"
    return None


def usable_model_inputs(
    covariates: pl.DataFrame, window: str, context_length: int
) -> tuple[list[SeriesKey], list[dict], list[Rejection]]:
    """Build one ``predict_quantiles`` input per instrument from a window's covariates, leaving out unusable ones.

    Returns
    -------
    keys, inputs, rejected
        ``inputs[i]`` is ``{"target": (T,), "past_covariates": {name: (T,)}}`` with T <= context_length,
        float32; ``keys[i]`` says whose it is, with ``as_of`` the close time of its last bar.
        ``rejected`` names each instrument left out and why (``_input_problem``).
        Instruments come in symbol order.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    keys: list[SeriesKey] = []
    inputs: list[dict] = []
    rejected: list[Rejection] = []
    for frame in sorted(covariates.partition_by("symbol", maintain_order=True), key=lambda f: f["symbol"][0]):
        _collect(window, _instrument_input(frame, context_length), keys, inputs, rejected)
    return keys, inputs, rejected


# An instrument's context as the model takes it: (symbol, as_of, input), or (symbol, problem) when it cannot.
_Input = tuple[str, datetime, dict] | tuple[str, str]


def _instrument_input(frame: pl.DataFrame, context_length: int) -> _Input:
    """One instrument's covariates (any order) as a model input, or why they cannot be one."""
    frame = (frame if frame["ts"].is_sorted() else frame.sort("ts")).tail(context_length)
    symbol = frame["symbol"][0]
    wide, narrow = _columns(frame)
    problem = _input_problem(frame, wide, narrow)
    if problem is not None:
        return symbol, problem
    return symbol, frame["ts"][-1], {"target": narrow["close"], "past_covariates": {n: narrow[n] for n in COVARIATE_COLUMNS}}


def _collect(window: str, made: _Input, keys: list, inputs: list, rejected: list) -> None:
    if len(made) == 2:
        rejected.append(Rejection(window, made[0], "model_input", made[1]))
    else:
        keys.append(SeriesKey(window, made[0], made[1]))
        inputs.append(made[2])


def window_model_inputs(
    covariates: Mapping[str, pl.DataFrame], context_length: int
) -> tuple[list[SeriesKey], list[dict], list[Rejection]]:
    """``usable_model_inputs`` of every window, in window order.

    When the windows share their instruments' rows (``WindowFrames`` by instrument), each
    instrument's context is built once per distinct slice of rows, and windows holding the same
    slice (a night's or a weekend's windows: same bars, same ``as_of``) share one input object,
    so the model can forecast it once.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    keys: list[SeriesKey] = []
    inputs: list[dict] = []
    rejected: list[Rejection] = []
    if not (isinstance(covariates, WindowFrames) and covariates.by_instrument):
        for window, frame in covariates.items():
            k, x, r = usable_model_inputs(frame, window, context_length)
            keys += k
            inputs += x
            rejected += r
        return keys, inputs, rejected
    made: dict[tuple[int, int, int], _Input] = {}
    columns: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    for window, parts in covariates.slices.items():
        for block, offset, length in sorted(parts, key=lambda p: covariates.blocks[p[0]]["symbol"][0]):
            # Only the last context_length rows reach the model: a longer slice ending at the same row is the same input.
            start = max(offset, offset + length - context_length)
            key = (block, start, offset + length - start)
            if key not in made:
                if block not in columns:
                    columns[block] = _columns(covariates.blocks[block])
                made[key] = _slice_input(covariates.blocks[block], *columns[block], *key[1:])
            _collect(window, made[key], keys, inputs, rejected)
    return keys, inputs, rejected


def _columns(frame: pl.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A frame's model columns as stored (float64) and as the model reads them (float32)."""
    wide = {name: frame[name].to_numpy() for name in ("close", *COVARIATE_COLUMNS)}
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = {name: values.astype(np.float32) for name, values in wide.items()}
    return wide, narrow


def _slice_input(
    block: pl.DataFrame, wide: dict[str, np.ndarray], narrow: dict[str, np.ndarray], start: int, length: int
) -> _Input:
    """``_instrument_input`` of rows [start, start + length) of one instrument's block (in time order).

    Its arrays are views of the block's: the windows of a run share their memory, and a service
    they are sent to receives each block once (``batch_wire.encode_inputs``).
    """
    end = start + length
    frame = block.slice(start, length)
    wide = {name: values[start:end] for name, values in wide.items()}
    narrow = {name: values[start:end] for name, values in narrow.items()}
    problem = _input_problem(frame, wide, narrow)
    if problem is not None:
        return frame["symbol"][0], problem
    return frame["symbol"][0], frame["ts"][-1], {
        "target": narrow["close"], "past_covariates": {n: narrow[n] for n in COVARIATE_COLUMNS}
    }


def model_inputs(covariates: pl.DataFrame, window: str, context_length: int) -> tuple[list[SeriesKey], list[dict]]:
    """``usable_model_inputs`` for callers that want every instrument or nothing: the first rejection raises ValueError."""
    keys, inputs, rejected = usable_model_inputs(covariates, window, context_length)
    if rejected:
        raise ValueError(str(rejected[0]))
    return keys, inputs
