"""Running Chronos-2 on a batch of inputs: through the forecast service when one answers, else in this process.

In this process the checkpoint loads once per process and device, and the device follows the
placement rules of ``device`` (GPU advisory lock, free-memory test, CPU fallback). A CUDA copy of
the model is never kept between batches: its memory goes back to the GPU before the lock does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from forecasting_pipeline.forecasting.device import (
    GPU_LOCK_KEY,
    Cuda,
    DeviceRun,
    GpuSettings,
    LockMode,
    LockScope,
    run_on_device,
)
from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID, LoadedModel, ModelIdentity, load_chronos2
from forecasting_pipeline.forecasting.predict import QUANTILE_LEVELS, predict_quantiles

logger = logging.getLogger(__name__)

_MODEL_CACHE: dict[tuple, LoadedModel] = {}
_MODEL_LOCK = threading.Lock()

# Series (targets + covariates) per forward pass. On the 2-core CPU the same series cost more per
# token in bigger passes; a GPU wants the larger batch (README: Performance).
CPU_BATCH_SIZE = 69
CUDA_BATCH_SIZE = 256


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
    dtype: str = "float32"
    batch_size: int | None = None
    num_threads: int | None = None
    min_free_memory_gb: float = 1.5
    lock_timeout_s: float = 60.0
    lock_key: int = GPU_LOCK_KEY
    lock_scope: LockScope = "shared"
    lock_database_url: str | None = None
    server_socket: str | None = None
    server_timeout_s: float = 30.0

    def batch_size_for(self, device: str) -> int:
        return self.batch_size or (CUDA_BATCH_SIZE if device == "cuda" else CPU_BATCH_SIZE)

    def gpu_settings(self) -> GpuSettings:
        return GpuSettings(
            self.device, self.min_free_memory_gb, self.lock_timeout_s, lock_key=self.lock_key, lock_scope=self.lock_scope
        )

    def load(self, device: str = "cpu") -> LoadedModel:
        """The checkpoint on ``device``, loaded once per process; later batches in the same process reuse it."""
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        key = (self.model, self.revision, device, self.dtype)
        with _MODEL_LOCK:
            if key not in _MODEL_CACHE:
                _MODEL_CACHE[key] = load_chronos2(self.model, self.revision, device, self.dtype)
            return _MODEL_CACHE[key]

    def release(self, device: str) -> None:
        """Drop this checkpoint's cached model on ``device`` (on CUDA: so its memory can be freed)."""
        with _MODEL_LOCK:
            _MODEL_CACHE.pop((self.model, self.revision, device, self.dtype), None)

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

        def work(device: str) -> tuple[np.ndarray, LoadedModel, dict[str, float]]:
            started = time.perf_counter()
            loaded = self.load(device)
            loaded_at = time.perf_counter()
            quantiles = predict_quantiles(
                loaded.pipeline, inputs, horizon, context_length, self.batch_size_for(device), quantile_levels, sort
            )
            timings = {"model_load_seconds": loaded_at - started, "predict_seconds": time.perf_counter() - loaded_at}
            return quantiles, loaded, timings

        (quantiles, loaded, timings), record = run_on_device(
            work, self.gpu_settings(), database_url=self.lock_database_url, cuda=cuda,
            release_cuda=lambda: self.release("cuda"), lock=lock,
        )
        return Prediction(quantiles, loaded.identity, timings, record)
