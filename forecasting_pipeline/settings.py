"""Settings: every environment variable the project reads, read in one place, and the resources built from them.

``definitions.py`` and the command line both build from ``Settings.from_env()``. Secrets
(database URLs, tokens, a URL that may carry credentials) never become plain values here: they
reach Dagster as ``dg.EnvVar``, resolved at run time and hidden in the UI, and the CLI's model
server reads the lock database's URL from the environment when it starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID
from forecasting_pipeline.market.cadences import CADENCES, DAILY, HOURLY
from forecasting_pipeline.serving.api.config import DEFAULT_HOST, DEFAULT_PORT

# Dagster and what builds on it are imported where resources are built: `forecasting-pipeline
# with-db` and the other light commands read settings without loading them.
if TYPE_CHECKING:
    from forecasting_pipeline.forecasting.runner import Chronos2Runner
    from forecasting_pipeline.market.sources import BarSource
    from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource
    from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource
    from forecasting_pipeline.orchestration.partitions import Windows
    from forecasting_pipeline.orchestration.placement import GpuPlacement
    from forecasting_pipeline.orchestration.resources import Chronos2Resource
    from forecasting_pipeline.serving.api.config import ServiceConfig

DATABASE_URL = "DATABASE_URL"
# Set by `forecasting-pipeline with-db` for its child when it started the embedded server.
EMBEDDED_DATABASE = "FORECASTING_EMBEDDED_DB"
# The variable holding the service's bearer token (a secret: read when the service starts, never stored here).
PREDICT_API_TOKEN = "PREDICT_API_TOKEN"


def database_url(env: Mapping[str, str] | None = None) -> str | None:
    """The ml_predictions database (a secret: never logged), for commands that run outside Dagster."""
    return (os.environ if env is None else env).get(DATABASE_URL) or None


def dagster_database_url(env: Mapping[str, str] | None = None) -> str | None:
    """Dagster's own storage (DAGSTER_PG_URL), when it is not the ml_predictions database."""
    return (os.environ if env is None else env).get("DAGSTER_PG_URL") or None


@dataclass(frozen=True)
class Settings:
    """Non-secret settings, and the names of the variables that hold the secrets.

    Each field names the variable it comes from; ``README.md`` (Configuration) lists them all.
    """

    instruments_file: str | None = None  # INSTRUMENTS_FILE
    market_data_source: str = "sample"  # MARKET_DATA_SOURCE
    market_data_path: str | None = None  # MARKET_DATA_PATH
    market_data_table: str = "ohlcv"  # MARKET_DATA_TABLE
    # MARKET_DATA_DATABASE_URL when set, else DATABASE_URL: the variable, never its value.
    market_data_url_variable: str = DATABASE_URL
    chronos2_model: str = DEFAULT_MODEL_ID  # CHRONOS2_MODEL
    chronos2_revision: str | None = None  # CHRONOS2_REVISION
    chronos2_device: str = "auto"  # CHRONOS2_DEVICE
    chronos2_dtype: str = "float32"  # CHRONOS2_DTYPE
    min_free_gpu_gb: float = 1.5  # CHRONOS2_MIN_FREE_GPU_GB
    gpu_lock_timeout_s: float = 60.0  # CHRONOS2_GPU_LOCK_TIMEOUT_S
    gpu_lock_scope: str = "shared"  # CHRONOS2_GPU_LOCK: shared (Kronos's key) or per-gpu
    model_server_socket: str | None = None  # CHRONOS2_SERVER
    model_server_timeout_s: float = 30.0  # CHRONOS2_SERVER_TIMEOUT_S: a run's connect/read limit against the service
    # FRAMES_DIR, else DAGSTER_HOME/storage/frames; on Kubernetes a volume every pod mounts.
    frames_dir: str = field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "storage" / "frames"))
    k8s_step_pods: bool = False  # K8S_STEP_PODS: one pod per step (dagster-k8s's k8s_job_executor)
    # K8S_GPUS_PER_STEP, K8S_GPU_NODE_SELECTOR, K8S_GPU_TOLERATIONS: the model step's pod; only with step pods.
    gpu_placement: GpuPlacement | None = None
    # FIRST_WINDOW_1H / FIRST_WINDOW_1D: the first partition of each cadence (None: the default).
    first_window: Mapping[str, str | None] = field(default_factory=lambda: {name: None for name in CADENCES})
    # WINDOWS_PER_BACKFILL_RUN_1H / _1D: windows one backfill run covers (None: the default).
    windows_per_backfill_run: Mapping[str, int | None] = field(default_factory=lambda: {name: None for name in CADENCES})
    kronos_batch: bool = False  # KRONOS_BATCH_URL is set (the URL itself is a secret)
    kronos_batch_token: bool = False  # KRONOS_BATCH_TOKEN is set
    kronos_timeout_s: float = 900.0  # KRONOS_BATCH_TIMEOUT_S
    model_configured: bool = False  # CHRONOS2_MODEL is set: never fall back to the demo checkpoint
    embedded_database: bool = False  # FORECASTING_EMBEDDED_DB=1: the database is `with-db`'s demo one
    pgdata: str = ".pgdata"  # FORECASTING_PGDATA: the embedded server's data folder
    serve_host: str = DEFAULT_HOST  # SERVE_HOST
    serve_port: int = DEFAULT_PORT  # SERVE_PORT
    batch_wait_ms: float = 20.0  # PREDICT_BATCH_WAIT_MS
    batch_max_series: int = 32  # PREDICT_BATCH_MAX_SERIES
    max_body_bytes: int = 8 * 1024 * 1024  # PREDICT_MAX_BODY_BYTES
    max_bars: int = 8192  # PREDICT_MAX_BARS
    max_batch_items: int = 64  # PREDICT_MAX_BATCH_ITEMS
    max_queued: int = 128  # PREDICT_MAX_QUEUED: on-demand series waiting before 503
    deadline_s: float = 5.0  # PREDICT_DEADLINE_S: longest an on-demand request waits for the model before 503
    max_cost: int = 4_194_304  # PREDICT_MAX_COST: series x context x horizon per request
    chunk_cost_gpu: int = 131_072  # SERVE_CHUNK_COST_GPU: series x context per chunk of a run's batch on the GPU
    chunk_cost_cpu: int = 4_096  # SERVE_CHUNK_COST_CPU: the same on the CPU
    public_dashboard: bool = False  # SERVE_PUBLIC_DASHBOARD: dashboard and /showcase open despite the token
    ensemble_lookback: int = 120  # ENSEMBLE_LOOKBACK: scored forecasts behind an instrument's weights and band
    ensemble_warmup: int = 20  # ENSEMBLE_WARMUP: scored forecasts before weights leave equal
    ensemble_shrinkage: float = 60.0  # ENSEMBLE_SHRINKAGE: pseudo-count toward the pooled weights
    ensemble_scheme: str = "grid"  # ENSEMBLE_SCHEME: grid, inverse or sqrt-inverse
    ensemble_kronos_wait_minutes: float = 30.0  # ENSEMBLE_KRONOS_WAIT_MINUTES: after the chain, before going without Kronos

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (the process environment by default); unset or empty means the default."""
        env = os.environ if env is None else env

        def get(name: str, default=None):
            return env.get(name) or default

        home = get("DAGSTER_HOME", tempfile.gettempdir())
        return cls(
            instruments_file=get("INSTRUMENTS_FILE"),
            market_data_source=get("MARKET_DATA_SOURCE", "sample"),
            market_data_path=get("MARKET_DATA_PATH"),
            market_data_table=get("MARKET_DATA_TABLE", "ohlcv"),
            market_data_url_variable="MARKET_DATA_DATABASE_URL" if get("MARKET_DATA_DATABASE_URL") else DATABASE_URL,
            chronos2_model=get("CHRONOS2_MODEL", DEFAULT_MODEL_ID),
            chronos2_revision=get("CHRONOS2_REVISION"),
            chronos2_device=get("CHRONOS2_DEVICE", "auto"),
            chronos2_dtype=get("CHRONOS2_DTYPE", "float32"),
            min_free_gpu_gb=float(get("CHRONOS2_MIN_FREE_GPU_GB", 1.5)),
            gpu_lock_timeout_s=float(get("CHRONOS2_GPU_LOCK_TIMEOUT_S", 60)),
            gpu_lock_scope=get("CHRONOS2_GPU_LOCK", "shared"),
            model_server_socket=get("CHRONOS2_SERVER"),
            model_server_timeout_s=_positive(env, "CHRONOS2_SERVER_TIMEOUT_S", 30.0),
            frames_dir=get("FRAMES_DIR") or str(Path(home) / "storage" / "frames"),
            k8s_step_pods=_flag(env, "K8S_STEP_PODS"),
            gpu_placement=_gpu_placement(env),
            first_window={name: get(f"FIRST_WINDOW_{name.upper()}") for name in CADENCES},
            windows_per_backfill_run={name: _count(env, f"WINDOWS_PER_BACKFILL_RUN_{name.upper()}") for name in CADENCES},
            kronos_batch=bool(get("KRONOS_BATCH_URL")),
            kronos_batch_token=bool(get("KRONOS_BATCH_TOKEN")),
            kronos_timeout_s=float(get("KRONOS_BATCH_TIMEOUT_S", 900)),
            model_configured=bool(get("CHRONOS2_MODEL")),
            embedded_database=get(EMBEDDED_DATABASE) == "1",
            pgdata=get("FORECASTING_PGDATA", ".pgdata"),
            serve_host=get("SERVE_HOST", DEFAULT_HOST),
            serve_port=int(get("SERVE_PORT", DEFAULT_PORT)),
            batch_wait_ms=float(get("PREDICT_BATCH_WAIT_MS", 20)),
            batch_max_series=int(get("PREDICT_BATCH_MAX_SERIES", 32)),
            max_body_bytes=int(get("PREDICT_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            max_bars=int(get("PREDICT_MAX_BARS", 8192)),
            max_batch_items=int(get("PREDICT_MAX_BATCH_ITEMS", 64)),
            max_queued=_count(env, "PREDICT_MAX_QUEUED") or 128,
            deadline_s=_positive(env, "PREDICT_DEADLINE_S", 5.0),
            max_cost=_count(env, "PREDICT_MAX_COST") or 4_194_304,
            chunk_cost_gpu=_count(env, "SERVE_CHUNK_COST_GPU") or 131_072,
            chunk_cost_cpu=_count(env, "SERVE_CHUNK_COST_CPU") or 4_096,
            public_dashboard=_flag(env, "SERVE_PUBLIC_DASHBOARD"),
            ensemble_lookback=_count(env, "ENSEMBLE_LOOKBACK") or 120,
            ensemble_warmup=_count(env, "ENSEMBLE_WARMUP") or 20,
            ensemble_shrinkage=_non_negative(env, "ENSEMBLE_SHRINKAGE", 60.0),
            ensemble_scheme=_choice(env, "ENSEMBLE_SCHEME", ("grid", "inverse", "sqrt-inverse")),
            ensemble_kronos_wait_minutes=_non_negative(env, "ENSEMBLE_KRONOS_WAIT_MINUTES", 30.0),
        )

    def with_model(self, model: str) -> Settings:
        return replace(self, chronos2_model=model)

    def windows(self) -> list[Windows]:
        """Both cadences' windows, hourly first."""
        from forecasting_pipeline.orchestration.partitions import cadence_windows

        return [
            cadence_windows(cadence, self.first_window.get(cadence.name), self.windows_per_backfill_run.get(cadence.name))
            for cadence in (HOURLY, DAILY)
        ]

    def symbols(self) -> list[str]:
        """The universe's symbols, for the per-instrument checks the definitions declare."""
        from forecasting_pipeline.market.instruments import load_instruments

        return [i.symbol for i in load_instruments(self.instruments_file)]


def _count(env: Mapping[str, str], name: str) -> int | None:
    value = (env.get(name) or "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive whole number, got {env.get(name)!r}")
    return int(value)


def _non_negative(env: Mapping[str, str], name: str, default: float) -> float:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{name} must be a non-negative number, got {env.get(name)!r}")
    return number


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    number = _non_negative(env, name, default)
    if number == 0:
        raise ValueError(f"{name} must be a positive number, got {env.get(name)!r}")
    return number


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or "").strip() or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {env.get(name)!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{name} must be true or false, got {env.get(name)!r}")
    return value in ("1", "true", "yes")


def _gpu_placement(env: Mapping[str, str]) -> GpuPlacement | None:
    """The model step's pod on Kubernetes; None without step pods, where a pod tag would reach nothing."""
    placement_vars = [name for name in ("K8S_GPUS_PER_STEP", "K8S_GPU_NODE_SELECTOR", "K8S_GPU_TOLERATIONS") if env.get(name)]
    if not _flag(env, "K8S_STEP_PODS"):
        if placement_vars:
            raise ValueError(f"{', '.join(placement_vars)} take effect only with K8S_STEP_PODS=true (one pod per step)")
        return None
    from forecasting_pipeline.orchestration.placement import GpuPlacement, parse_node_selector, parse_tolerations

    gpus = env.get("K8S_GPUS_PER_STEP") or "1"
    if not gpus.strip().isdigit():
        raise ValueError(f"K8S_GPUS_PER_STEP must be a whole number of GPUs, got {gpus!r}")
    return GpuPlacement(
        int(gpus), parse_node_selector(env.get("K8S_GPU_NODE_SELECTOR")), parse_tolerations(env.get("K8S_GPU_TOLERATIONS"))
    )


def _chronos2_fields(settings: Settings) -> dict[str, object]:
    return dict(
        model=settings.chronos2_model,
        revision=settings.chronos2_revision,
        device=settings.chronos2_device,
        dtype=settings.chronos2_dtype,
        min_free_memory_gb=settings.min_free_gpu_gb,
        lock_timeout_s=settings.gpu_lock_timeout_s,
        lock_scope=settings.gpu_lock_scope,
    )


def chronos2_resource(settings: Settings) -> Chronos2Resource:
    import dagster as dg

    from forecasting_pipeline.orchestration.resources import Chronos2Resource

    return Chronos2Resource(
        **_chronos2_fields(settings),
        lock_database_url=dg.EnvVar(DATABASE_URL),
        server_socket=settings.model_server_socket,
        server_timeout_s=settings.model_server_timeout_s,
    )


def chronos2_runner(settings: Settings, env: Mapping[str, str] | None = None) -> Chronos2Runner:
    """The runner of a process outside Dagster (the model server): the runs' settings, the lock's URL from ``env``."""
    from forecasting_pipeline.forecasting.runner import Chronos2Runner

    env = os.environ if env is None else env
    return Chronos2Runner(**_chronos2_fields(settings), lock_database_url=env.get(DATABASE_URL))


def service_config(
    settings: Settings, env: Mapping[str, str] | None = None, host: str | None = None, port: int | None = None
) -> ServiceConfig:
    """The forecast service's configuration; its bearer token from ``env`` (the process environment)."""
    from forecasting_pipeline.serving.api.config import ServiceConfig

    env = os.environ if env is None else env
    return ServiceConfig(
        host=host or settings.serve_host,
        port=settings.serve_port if port is None else port,
        batch_wait_s=settings.batch_wait_ms / 1000,
        batch_max_series=settings.batch_max_series,
        max_body_bytes=settings.max_body_bytes,
        max_bars=settings.max_bars,
        max_batch_items=settings.max_batch_items,
        max_queued=settings.max_queued,
        deadline_s=settings.deadline_s,
        max_cost=settings.max_cost,
        chunk_cost_gpu=settings.chunk_cost_gpu,
        chunk_cost_cpu=settings.chunk_cost_cpu,
        token=env.get(PREDICT_API_TOKEN) or None,
        public_dashboard=settings.public_dashboard,
    )


def bar_source(settings: Settings, env: Mapping[str, str] | None = None) -> BarSource:
    """The configured market-data source for a process outside Dagster, its database URL read from ``env``."""
    from forecasting_pipeline.orchestration.resources import MarketDataResource

    env = os.environ if env is None else env
    postgres = settings.market_data_source == "postgres"
    return MarketDataResource(
        source=settings.market_data_source,
        path=settings.market_data_path,
        database_url=env.get(settings.market_data_url_variable) if postgres else None,
        table=settings.market_data_table,
    ).bar_source()


def resources(settings: Settings) -> dict[str, object]:
    """Every resource the definitions bind, by key."""
    import dagster as dg

    from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER
    from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
    from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource

    source = settings.market_data_source
    return {
        "database": PostgresResource(url=dg.EnvVar(DATABASE_URL)),
        "instruments": InstrumentsResource(file=settings.instruments_file),
        "market_data": MarketDataResource(
            source=source,
            path=settings.market_data_path,
            database_url=dg.EnvVar(settings.market_data_url_variable) if source == "postgres" else None,
            table=settings.market_data_table,
        ),
        "chronos2": chronos2_resource(settings),
        "ensemble": ensemble_resource(settings),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=settings.frames_dir),
    }


def ensemble_resource(settings: Settings) -> EnsembleResource:
    from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource

    if settings.ensemble_warmup > settings.ensemble_lookback:
        raise ValueError(
            f"ENSEMBLE_WARMUP ({settings.ensemble_warmup}) may not exceed ENSEMBLE_LOOKBACK ({settings.ensemble_lookback})"
        )
    return EnsembleResource(
        lookback=settings.ensemble_lookback, warmup=settings.ensemble_warmup, shrinkage=settings.ensemble_shrinkage,
        scheme=settings.ensemble_scheme, kronos_wait_minutes=settings.ensemble_kronos_wait_minutes,
    )


def kronos_batch_resource(settings: Settings) -> KronosBatchResource:
    import dagster as dg

    from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource

    return KronosBatchResource(
        url=dg.EnvVar("KRONOS_BATCH_URL"),
        token=dg.EnvVar("KRONOS_BATCH_TOKEN") if settings.kronos_batch_token else None,
        timeout_s=settings.kronos_timeout_s,
        lock_database_url=dg.EnvVar(DATABASE_URL),
        lock_timeout_s=settings.gpu_lock_timeout_s,
    )
