"""Running Chronos-2 on a batch of inputs: through the forecast service when one answers, else in this process.

In this process the checkpoint loads once per process and precision, into host memory, and the
device follows the placement rules of ``device`` (GPU advisory lock, free-memory test, CPU
fallback). A GPU call borrows that host copy (``host_model``): the weights are copied to the card
for the call and its memory goes back to the GPU before the lock does, unless ``gpu_resident``
keeps them there. The precision follows ``precision.resolve_dtype`` for the device that runs the
call, and a CPU call long enough to repay a compilation runs compiled (``compilation``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from forecasting_pipeline.forecasting.compilation import CompileSetting, compiled_passes, should_compile
from forecasting_pipeline.forecasting.device import (
    GPU_LOCK_KEY,
    Cuda,
    DeviceRun,
    GpuSettings,
    LockMode,
    LockScope,
    TorchCuda,
    run_on_device,
)
from forecasting_pipeline.forecasting.host_model import HostModel
from forecasting_pipeline.forecasting.model import (
    DEFAULT_MODEL_ID,
    LoadedModel,
    ModelIdentity,
    load_chronos2,
    model_modules,
    use_attention,
)
from forecasting_pipeline.forecasting.precision import CPUINFO, cpu_has_amx, resolve_dtype
from forecasting_pipeline.forecasting.predict import QUANTILE_LEVELS, predict_quantiles

logger = logging.getLogger(__name__)

# (model, revision, dtype) -> the checkpoint in host memory, and its weights' lending to the GPU.
_MODEL_CACHE: dict[tuple, tuple[LoadedModel, HostModel]] = {}
_MODEL_LOCK = threading.Lock()

# Series (targets + covariates) per forward pass. Chronos-2's group attention spans the whole pass,
# masked so that each instrument's three series see only each other, so its cost grows with the
# square of the pass: a CPU does best with small passes, while a GPU wants the large batch.
CPU_BATCH_SIZE = 24
CUDA_BATCH_SIZE = 256


def attention_for(device: str, cpuinfo: Path = CPUINFO) -> Literal["eager", "sdpa"]:
    """The attention kernel of a call on ``device``: both compute the same attention, at different speeds.

    GPUs and AMX CPUs run PyTorch's fused SDPA kernel faster; on other CPUs, at these short
    sequences, the eager one (two matmuls and a float32 softmax) is faster (docs/performance.md).
    """
    return "sdpa" if device == "cuda" or cpu_has_amx(cpuinfo) else "eager"


@dataclass(frozen=True)
class Prediction:
    """Quantiles (n_series, horizon, levels), the model that made them, load/predict seconds, and where it ran."""

    quantiles: np.ndarray
    model: ModelIdentity
    timings: dict[str, float]
    device_run: DeviceRun


@dataclass(frozen=True)
class Chronos2Runner:
    """Which checkpoint to run, and how: device, precision, GPU sharing, and an optional forecast service.

    ``lock_database_url`` is the database of the GPU advisory lock (the ml_predictions one): a
    secret, never logged. ``server_socket`` names a running forecast service's Unix socket, and
    ``server_timeout_s`` the longest the run waits to connect to it or for its next byte.
    """

    model: str = DEFAULT_MODEL_ID
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    num_threads: int | None = None
    min_free_memory_gb: float = 1.5
    lock_timeout_s: float = 60.0
    lock_key: int = GPU_LOCK_KEY
    lock_scope: LockScope = "shared"
    lock_database_url: str | None = None
    server_socket: str | None = None
    server_timeout_s: float = 30.0
    gpu_resident: bool = False
    compile: CompileSetting = "auto"

    def batch_size_for(self, device: str) -> int:
        return self.batch_size or (CUDA_BATCH_SIZE if device == "cuda" else CPU_BATCH_SIZE)

    def gpu_settings(self) -> GpuSettings:
        return GpuSettings(
            self.device, self.min_free_memory_gb, self.lock_timeout_s, lock_key=self.lock_key, lock_scope=self.lock_scope
        )

    def load(self, device: str = "cpu", cuda: Cuda | None = None) -> LoadedModel:
        """The checkpoint in host memory, in the precision ``dtype`` gives on ``device``; loaded once per process.

        ``cuda`` is read only to resolve ``dtype="auto"`` for a GPU call.
        """
        return self._cached(resolve_dtype(self.dtype, device, cuda))[0]

    def _cached(self, dtype: str) -> tuple[LoadedModel, HostModel]:
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        key = (self.model, self.revision, dtype)
        with _MODEL_LOCK:
            if key not in _MODEL_CACHE:
                loaded = load_chronos2(self.model, self.revision, "cpu", dtype)
                _MODEL_CACHE[key] = (loaded, HostModel(loaded.pipeline.model))
            return _MODEL_CACHE[key]

    def release(self, device: str) -> None:
        """Give back what this checkpoint holds on ``device``: on CUDA its weights go back to the host; on the CPU it is dropped."""
        with _MODEL_LOCK:
            keys = [key for key in _MODEL_CACHE if key[:2] == (self.model, self.revision)]
            for key in keys:
                if device == "cuda":
                    _MODEL_CACHE[key][1].return_to_host()
                else:
                    del _MODEL_CACHE[key]

    def predict(self, inputs: list[dict], horizon: int, context_length: int, cuda: Cuda | None = None) -> Prediction:
        """Forecast in the forecast service when one is configured and answers in time, else in this process.

        ``cuda`` replaces the real CUDA runtime in tests only.
        """
        if not self.server_socket:
            return self.predict_here(inputs, horizon, context_length, cuda)
        from forecasting_pipeline.forecasting.batch_wire import model_key
        from forecasting_pipeline.forecasting.service_client import ServiceUnavailable, service_forecast

        try:
            return service_forecast(
                self.server_socket, model_key(self.model, self.revision, self.dtype), inputs, horizon, context_length,
                self.server_timeout_s,
            )
        except ServiceUnavailable as exc:
            logger.warning("%s; loading the model in this run", exc)
            here = self.predict_here(inputs, horizon, context_length, cuda)
            return replace(here, device_run=replace(here.device_run, model_process=f"this run ({exc})"))

    def predict_here(
        self,
        inputs: list[dict],
        horizon: int,
        context_length: int,
        cuda: Cuda | None = None,
        quantile_levels: Sequence[float] = QUANTILE_LEVELS,
        sort: bool = True,
        lock: LockMode = "wait",
    ) -> Prediction:
        """Load and run the model in this process on the chosen device, falling back to the CPU (``device``).

        ``quantile_levels`` and ``sort`` are those of ``predict.predict_quantiles``; ``lock`` says how
        the GPU lock is taken (``device.LockMode``).
        """
        cuda = cuda or TorchCuda()
        batch = (inputs, horizon, context_length, quantile_levels, sort)
        # torch and chronos are the model's own imports (seconds, once per process): imported
        # here, before the device is chosen (which asks torch), they count as loading the model.
        started, cpu_started = time.perf_counter(), time.process_time()
        model_modules()
        imported = {
            "model_load_seconds": time.perf_counter() - started, "model_cpu_seconds": time.process_time() - cpu_started,
        }
        # A GPU call hands the weights back to the host itself (HostModel.lent), unless resident or
        # under a held lock (whose holder gives them back with it); release_cuda covers a failure
        # that surfaces after the call (the device's synchronize).
        (quantiles, identity, timings), record = run_on_device(
            lambda device: self._predict_on(device, cuda, *batch, keep=lock == "held"), self.gpu_settings(),
            database_url=self.lock_database_url, cuda=cuda, release_cuda=lambda: self.release("cuda"), lock=lock,
        )
        timings = {**timings, **{key: timings[key] + seconds for key, seconds in imported.items()}}
        return Prediction(quantiles, identity, timings, record)

    def _predict_on(
        self, device: str, cuda: Cuda, inputs, horizon, context_length, quantile_levels, sort, keep: bool = False
    ) -> tuple[np.ndarray, ModelIdentity, dict[str, float]]:
        """One batch on ``device`` with the host copy: lent to the GPU for the call (kept there with ``keep``
        or ``gpu_resident``), or used in place on the CPU."""
        started, cpu_started = time.perf_counter(), time.process_time()
        loaded, host = self._cached(resolve_dtype(self.dtype, device, cuda))
        placement = host.lent(cuda, self.gpu_resident or keep) if device == "cuda" else host.on_host()
        with placement:
            loaded_at = time.perf_counter()
            use_attention(loaded.pipeline, attention_for(device))
            pass_size = self.batch_size_for(device)
            compiled = should_compile(self.compile, device, series_count(inputs), pass_size)
            with compiled_passes(loaded.pipeline, pass_size) if compiled else nullcontext():
                quantiles = predict_quantiles(
                    loaded.pipeline, inputs, horizon, context_length, pass_size, quantile_levels, sort
                )
        timings = {
            "model_load_seconds": loaded_at - started, "predict_seconds": time.perf_counter() - loaded_at,
            # CPU seconds of every thread of the process that ran the call (load and predict): on a
            # shared machine, what the call cost regardless of who else was running.
            "model_cpu_seconds": time.process_time() - cpu_started,
        }
        return quantiles, replace(loaded.identity, device=device), timings


def series_count(inputs: list[dict]) -> int:
    """Series (each target and covariate) in a batch of model inputs: what a pass's size counts."""
    return sum(1 + len(x.get("past_covariates") or {}) for x in inputs)
