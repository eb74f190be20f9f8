"""Typed Dagster resources: the database, the instrument universe, the bar source, the Chronos-2 model and its registry.

Each is a thin, configurable shell over plain domain code; ``settings.py`` builds them. Secrets
(database URLs) are set through ``dg.EnvVar``, resolved at run time and hidden in the UI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dagster as dg
import psycopg
from pydantic import Field

from forecasting_pipeline.forecasting.champion import champion_runner
from forecasting_pipeline.forecasting.compilation import COMPILE_MIN_PASSES, CompileSetting
from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY
from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.market.instruments import Instrument, load_instruments, select_instruments
from forecasting_pipeline.market.sources import BarSource, BarTable, FileSource, SampleSource, TableSource
from forecasting_pipeline.scoring.promotion import DEFAULT_MIN_FORECASTS
from forecasting_pipeline.storage.database import connect, describe_database


class PostgresResource(dg.ConfigurableResource):
    """The PostgreSQL database that holds ``ml_predictions``."""

    url: str = Field(description="libpq URL of the database (a secret: set it with EnvVar('DATABASE_URL')).")
    connect_attempts: int = Field(default=3, description="Connection attempts before failing.")
    connect_backoff_s: float = Field(default=0.5, description="First retry delay in seconds; doubles each attempt.")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Yield a connection that is closed however the block ends."""
        conn = connect(self.url, attempts=self.connect_attempts, backoff_s=self.connect_backoff_s)
        try:
            yield conn
        finally:
            conn.close()

    def describe(self) -> str:
        return describe_database(self.url)


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

    def bar_source(self) -> BarSource:
        """The configured source; ValueError naming the missing setting when it cannot be built."""
        if self.source == "sample":
            return SampleSource()
        if self.source == "files":
            if not self.path:
                raise ValueError("MARKET_DATA_SOURCE=files needs MARKET_DATA_PATH")
            return FileSource(self.path)
        if not self.database_url:
            raise ValueError("MARKET_DATA_SOURCE=postgres needs MARKET_DATA_DATABASE_URL or DATABASE_URL")
        table = BarTable(
            table=self.table, schema=self.table_schema, symbol_col=self.symbol_column,
            timeframe_col=self.timeframe_column, ts_col=self.ts_column, open_col=self.open_column,
            high_col=self.high_column, low_col=self.low_column, close_col=self.close_column,
            volume_col=self.volume_column,
        )
        return TableSource(self.database_url, table)


class Chronos2Resource(dg.ConfigurableResource):
    """The Chronos-2 checkpoint and how to run it: device, precision, and sharing the GPU (``forecasting.device``)."""

    model: str = Field(default=DEFAULT_MODEL_ID, description="Hub model id or local checkpoint directory (CHRONOS2_MODEL).")
    revision: str | None = Field(default=None, description="Hub revision to pin (CHRONOS2_REVISION); recorded in model_version.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="auto: CUDA when available, the GPU lock is free and enough memory is free, else CPU; "
        "cuda: CUDA without the free-memory test; cpu: never the GPU (CHRONOS2_DEVICE).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Weights precision: auto is bfloat16 on CPUs with AMX or AVX512-BF16 and GPUs of compute capability "
        ">= 8.0, float32 elsewhere; float32 or bfloat16 force one (CHRONOS2_DTYPE). Recorded in model_version.",
    )
    batch_size: int | None = Field(
        default=None, description="Series (targets + covariates) per forward pass; unset: 256 on CUDA, 24 on the CPU.",
    )
    num_threads: int | None = Field(default=None, description="torch CPU threads (torch's default when unset).")
    min_free_memory_gb: float = Field(
        default=1.5, description="auto uses CUDA only with at least this much free GPU memory (CHRONOS2_MIN_FREE_GPU_GB)."
    )
    lock_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for the GPU advisory lock before running on the CPU (CHRONOS2_GPU_LOCK_TIMEOUT_S)."
    )
    lock_key: int = Field(default=GPU_LOCK_KEY, description="PostgreSQL advisory-lock key every GPU user takes (docs/gpu-sharing.md).")
    lock_scope: Literal["shared", "per-gpu"] = Field(
        default="shared",
        description="shared: take lock_key, as Kronos does on the shared card; per-gpu: a key per GPU UUID, so "
        "several GPUs (Kubernetes GPU nodes) work at once (CHRONOS2_GPU_LOCK).",
    )
    lock_database_url: str | None = Field(
        default=None, description="Database of the GPU advisory lock, the ml_predictions one (a secret; EnvVar DATABASE_URL)."
    )
    gpu_resident: bool = Field(
        default=False,
        description="Keep the weights on the GPU between calls instead of copying them from host memory for each "
        "call; only for a card no other process needs (CHRONOS2_GPU_RESIDENT).",
    )
    compile: CompileSetting = Field(
        default="auto",
        description=f"torch.compile for CPU calls: auto for calls of at least {COMPILE_MIN_PASSES} full passes "
        "(backfill runs), on for every CPU call, off never (CHRONOS2_COMPILE).",
    )
    server_socket: str | None = Field(
        default=None,
        description="Unix socket of a running `forecasting-pipeline serve` (CHRONOS2_SERVER): runs send their "
        "batch there instead of loading the model; when none answers in time, the run loads it itself.",
    )
    server_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Longest a run waits to connect to the forecast service or for its next byte before it loads the "
        "model itself (CHRONOS2_SERVER_TIMEOUT_S).",
    )

    registry_database_url: str | None = Field(
        default=None,
        description="Database of the fine-tuned checkpoints' registry, the ml_predictions one (a secret; EnvVar "
        "DATABASE_URL). When set, a cadence's registered champion replaces `model` for that cadence.",
    )

    def configured_runner(self) -> Chronos2Runner:
        """The configured checkpoint (``model``, ``revision``), whatever the registry says."""
        return Chronos2Runner(
            model=self.model, revision=self.revision, device=self.device, dtype=self.dtype,
            batch_size=self.batch_size, num_threads=self.num_threads, min_free_memory_gb=self.min_free_memory_gb,
            lock_timeout_s=self.lock_timeout_s, lock_key=self.lock_key, lock_scope=self.lock_scope,
            lock_database_url=self.lock_database_url,
            server_socket=self.server_socket, server_timeout_s=self.server_timeout_s, gpu_resident=self.gpu_resident,
            compile=self.compile,
        )

    def runner(self, timeframe: str | None = None) -> Chronos2Runner:
        """The checkpoint that serves ``timeframe``: its registered champion, else the configured one."""
        return champion_runner(self.configured_runner(), self.registry_database_url if timeframe else None, timeframe or "")


class ModelRegistryResource(dg.ConfigurableResource):
    """Where fine-tuned checkpoints are stored, and what their promotion test asks (docs/fine-tuning.md)."""

    directory: str = Field(description="Folder of the fine-tuned checkpoints (MODEL_REGISTRY_DIR); every pod must see it.")
    min_forecasts: int = Field(
        default=DEFAULT_MIN_FORECASTS,
        description="Paired out-of-sample forecasts the promotion test needs at least (PROMOTION_MIN_FORECASTS).",
    )
