"""Typed Dagster resources: the instrument universe, the market-data source and the Chronos-2 model.

Each is a thin, configurable shell over plain domain code (instruments, market_data, chronos_model).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID, LoadedModel, ModelIdentity, load_chronos2
from forecasting_pipeline.storage.database import connect
from forecasting_pipeline.forecasting.inputs import predict_quantiles
from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY, Cuda, DeviceRun, GpuSettings, run_on_device
from forecasting_pipeline.market.instruments import Instrument, load_instruments, select_instruments
from forecasting_pipeline.market.sources.files import read_bars_from_files
from forecasting_pipeline.market.sources.postgres import BarTable, read_bars_from_table
from forecasting_pipeline.market.sources.sample import SAMPLE_IS_SYNTHETIC_NOTE, sample_bars
from forecasting_pipeline.market.sources.schema import empty_bars

logger = logging.getLogger(__name__)


class InstrumentsResource(dg.ConfigurableResource):
    """The instrument universe: symbols, asset classes and trading calendars, from a YAML file."""

    file: str | None = Field(default=None, description="Instrument file; the package's default universe when unset.")
    symbols: list[str] | None = Field(default=None, description="Restrict runs to these symbols (all when unset).")

    def instruments(self) -> list[Instrument]:
        universe = load_instruments(self.file)
        return select_instruments(universe, self.symbols) if self.symbols else universe


class MarketDataResource(dg.ConfigurableResource):
    """Where OHLCV bars come from: ``sample`` (synthetic), ``files`` (Parquet/CSV per symbol) or ``postgres``."""

    source: Literal["sample", "files", "postgres"] = Field(default="sample", description="Bar source.")
    path: str | None = Field(default=None, description="Root folder for `files`: {path}/{cadence}/{SYMBOL}.parquet|csv.")
    database_url: str | None = Field(default=None, description="PostgreSQL holding the bar table (a secret; EnvVar).")
    table: str = Field(default="ohlcv", description="Bar table for `postgres`.")
    table_schema: str | None = Field(default=None, description="Schema of the bar table (search_path when unset).")
    symbol_column: str = "symbol"
    timeframe_column: str | None = Field(default="timeframe", description="Cadence column; unset when the table holds one cadence.")
    ts_column: str = Field(default="ts", description="Bar close time column.")
    open_column: str = "open"
    high_column: str = "high"
    low_column: str = "low"
    close_column: str = "close"
    volume_column: str = "volume"

    @property
    def is_synthetic(self) -> bool:
        return self.source == "sample"

    def describe(self) -> str:
        if self.source == "sample":
            return SAMPLE_IS_SYNTHETIC_NOTE
        if self.source == "files":
            return f"files under {self.path}"
        return f"PostgreSQL table {self.table_schema + '.' if self.table_schema else ''}{self.table}"

    def _bar_table(self) -> BarTable:
        return BarTable(
            table=self.table, schema=self.table_schema, symbol_col=self.symbol_column,
            timeframe_col=self.timeframe_column, ts_col=self.ts_column, open_col=self.open_column,
            high_col=self.high_column, low_col=self.low_column, close_col=self.close_column,
            volume_col=self.volume_column,
        )

    def bars(
        self, instruments: list[Instrument], cadence: str, end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """The last ``n_bars`` bars closed at or before ``end`` for each instrument.

        Returns
        -------
        bars, errors
            Bars of every instrument that could be read, and for each one that could not
            (unreadable file, missing columns, wrong types), the reason. One bad source file
            never hides the other instruments.
        """
        if self.source == "postgres":
            if not self.database_url:
                raise ValueError("MARKET_DATA_SOURCE=postgres needs MARKET_DATA_DATABASE_URL or DATABASE_URL")
            table = self._bar_table()
            conn = connect(self.database_url)
            try:
                frame = read_bars_from_table(conn, table, [i.symbol for i in instruments], cadence, end, n_bars)
            finally:
                conn.close()
            return frame, {}
        frames, errors = [], {}
        for instrument in instruments:
            try:
                if self.source == "sample":
                    frames.append(sample_bars(instrument, cadence, end, n_bars))
                else:
                    if not self.path:
                        raise ValueError("MARKET_DATA_SOURCE=files needs MARKET_DATA_PATH")
                    frames.append(read_bars_from_files(Path(self.path), cadence, instrument.symbol, end, n_bars))
            except (OSError, ValueError) as exc:
                errors[instrument.symbol] = str(exc)
        return (pl.concat(frames) if frames else empty_bars()), errors


_MODEL_CACHE: dict[tuple, LoadedModel] = {}
_MODEL_LOCK = threading.Lock()


class Chronos2Resource(dg.ConfigurableResource):
    """The Chronos-2 checkpoint and how to run it: device, precision, and sharing the GPU (see gpu.py)."""

    model: str = Field(default=DEFAULT_MODEL_ID, description="Hub model id or local checkpoint directory (CHRONOS2_MODEL).")
    revision: str | None = Field(default=None, description="Hub revision to pin (CHRONOS2_REVISION); recorded in model_version.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: CUDA when available, the GPU lock is free and enough memory is free, else CPU; "
        "cuda: CUDA without the free-memory test; cpu: never the GPU (CHRONOS2_DEVICE).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(default="float32", description="Weights precision; bfloat16 is opt-in (CHRONOS2_DTYPE).")
    batch_size: int | None = Field(
        default=None,
        description="Series (targets + covariates) per forward pass; unset: 256 on CUDA, 69 on the CPU.",
    )
    num_threads: int | None = Field(default=None, description="torch CPU threads (torch's default when unset).")
    min_free_memory_gb: float = Field(
        default=1.5, description="auto uses CUDA only with at least this much free GPU memory (CHRONOS2_MIN_FREE_GPU_GB)."
    )
    lock_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for the GPU advisory lock before running on the CPU (CHRONOS2_GPU_LOCK_TIMEOUT_S)."
    )
    lock_key: int = Field(default=GPU_LOCK_KEY, description="PostgreSQL advisory-lock key every GPU user takes (README).")
    lock_database_url: str | None = Field(
        default=None, description="Database of the GPU advisory lock, the ml_predictions one (a secret; EnvVar DATABASE_URL)."
    )
    server_socket: str | None = Field(
        default=None,
        description="Unix socket of a running `forecasting-pipeline model-server` (CHRONOS2_SERVER): runs send their "
        "batch there instead of loading the model; when none answers, the run loads it itself.",
    )

    def batch_size_for(self, device: str) -> int:
        # On the 2-core CPU the same series cost more per token in bigger passes (cache-friendlier
        # tensors): per 23-instrument window, passes of 69 series (one window) took 7.3 s, of 138
        # 7.6 s, of 276 9.6 s. A GPU wants the larger batch.
        return self.batch_size or (256 if device == "cuda" else 69)

    def gpu_settings(self) -> GpuSettings:
        return GpuSettings(self.device, self.min_free_memory_gb, self.lock_timeout_s, lock_key=self.lock_key)

    def load(self, device: str = "cpu") -> LoadedModel:
        """Load the checkpoint on ``device`` once per process; later runs in the same process reuse it."""
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

    def predict_quantiles(
        self, inputs: list[dict], horizon: int, context_length: int, cuda: Cuda | None = None
    ) -> tuple[np.ndarray, ModelIdentity, dict[str, float], DeviceRun]:
        """Forecast in the model server when one is configured and answers, else in this process.

        Returns quantiles (n_series, horizon, 3), the model that made them, load/predict seconds,
        and where it ran. ``cuda`` replaces the real CUDA runtime in tests only.
        """
        if self.server_socket:
            from forecasting_pipeline.forecasting.model_server import ModelServerUnavailable, model_key, request_forecast

            try:
                served = request_forecast(
                    self.server_socket, model_key(self.model, self.revision, self.dtype), inputs, horizon, context_length
                )
                return served.quantiles, served.model, served.timings, served.device_run
            except ModelServerUnavailable as exc:
                logger.warning("%s; loading the model in this run", exc)
                quantiles, model, timings, record = self.predict_here(inputs, horizon, context_length, cuda)
                return quantiles, model, timings, replace(record, model_process=f"this run ({exc})")
        return self.predict_here(inputs, horizon, context_length, cuda)

    def predict_here(
        self, inputs: list[dict], horizon: int, context_length: int, cuda: Cuda | None = None
    ) -> tuple[np.ndarray, ModelIdentity, dict[str, float], DeviceRun]:
        """Load and run the model in this process on the chosen device, falling back to the CPU (gpu.run_on_device)."""

        def work(device: str) -> tuple[np.ndarray, LoadedModel, dict[str, float]]:
            started = time.perf_counter()
            loaded = self.load(device)
            loaded_at = time.perf_counter()
            quantiles = predict_quantiles(loaded.pipeline, inputs, horizon, context_length, self.batch_size_for(device))
            timings = {"model_load_seconds": loaded_at - started, "predict_seconds": time.perf_counter() - loaded_at}
            return quantiles, loaded, timings

        # A CUDA model is not kept between runs: its memory goes back to the GPU before the lock does.
        (quantiles, loaded, timings), record = run_on_device(
            work, self.gpu_settings(), database_url=self.lock_database_url, cuda=cuda,
            release_cuda=lambda: self.release("cuda"),
        )
        return quantiles, loaded.identity, timings, record
