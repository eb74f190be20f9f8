"""Settings: every environment variable the project reads, declared once, and the resources built from them.

Each variable is one field of ``Settings``, declared with ``var(NAME, default, meaning, group)``:
its type is the field's annotation. ``forecasting-pipeline config-reference`` prints the
configuration reference (docs/configuration.md) from these declarations, and a test keeps that page
equal to the code. ``Settings.from_env()`` reads the environment where a process starts (the
definitions' load, the command line, the forecast service) and refuses a bad value there, with a
``SettingsError`` naming each variable and what is wrong with its value.

Secrets (database URLs, tokens, a URL that may carry credentials) are declared as ``Secret`` fields,
which keep whether the variable is set and never its value: they reach Dagster as ``dg.EnvVar``,
resolved at run time and hidden in the UI, and the commands that run outside Dagster read the value
from the environment where they use it.

Variables that other tools read (Dagster, the model hub's client, ...) and that the project sets or
relies on are listed in ``OTHER_VARIABLES``, for the reference.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator
from pydantic_core import core_schema

from forecasting_pipeline.ensemble.calibration import MAX_BAND_GAMMA
from forecasting_pipeline.forecasting.compilation import COMPILE_MIN_PASSES, CompileSetting
from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID
from forecasting_pipeline.market.cadences import CADENCES, DAILY, HOURLY, Cadence
from forecasting_pipeline.serving.api.config import DEFAULT_HOST, DEFAULT_PORT

# Dagster and what builds on it are imported where resources are built: `forecasting-pipeline
# with-db` and the other light commands read settings without loading them.
if TYPE_CHECKING:
    import dagster as dg

    from forecasting_pipeline.forecasting.runner import Chronos2Runner
    from forecasting_pipeline.market.sources import BarSource
    from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource
    from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource
    from forecasting_pipeline.orchestration.partitions import Windows
    from forecasting_pipeline.orchestration.placement import GpuPlacement
    from forecasting_pipeline.orchestration.resources import Chronos2Resource, ModelRegistryResource
    from forecasting_pipeline.serving.api.config import ServiceConfig

DATABASE_URL = "DATABASE_URL"
# Set by `forecasting-pipeline with-db` for its child when it started the embedded server.
EMBEDDED_DATABASE = "FORECASTING_EMBEDDED_DB"
# The variable holding the service's bearer token (a secret: read when the service starts, never stored here).
PREDICT_API_TOKEN = "PREDICT_API_TOKEN"

# The repository root of a source checkout (it holds the instance's dagster.yaml); None for an installed package.
_CHECKOUT = Path(__file__).resolve().parents[1]
PROJECT_DAGSTER_HOME = str(_CHECKOUT) if (_CHECKOUT / "dagster.yaml").is_file() else None

# The reference's sections, in the order it shows them.
DATABASE = "Database"
MARKET_DATA = "Market data"
MODEL = "The model and the GPU"
WINDOWS = "Windows and backfills"
KUBERNETES = "Kubernetes"
KRONOS = "Kronos"
ENSEMBLE = "The ensemble"
FINETUNE = "Fine-tuning and promotion"
SERVICE = "The forecast service"
LOCAL = "Local development and the command line"
GROUPS = (DATABASE, MARKET_DATA, MODEL, WINDOWS, KUBERNETES, KRONOS, ENSEMBLE, FINETUNE, SERVICE, LOCAL)


class SettingsError(ValueError):
    """Bad settings: one line per problem, each naming the variable and what is wrong with its value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A secret variable as the settings hold it: its name and whether it is set, never its value."""

    __slots__ = ("name", "is_set")

    def __init__(self, name: str, is_set: bool) -> None:
        self.name, self.is_set = name, is_set

    def __bool__(self) -> bool:
        return self.is_set

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (self.name, self.is_set) == (other.name, other.is_set)

    def __hash__(self) -> int:
        return hash((self.name, self.is_set))

    def __repr__(self) -> str:
        return f"Secret({self.name}, {'set' if self.is_set else 'unset'})"

    def env_var(self) -> dg.EnvVar:
        """The variable for Dagster: resolved when a run starts, hidden in the UI."""
        import dagster as dg

        return dg.EnvVar(self.name)

    def value(self, env: Mapping[str, str] | None = None) -> str | None:
        """The value, for a process outside Dagster that uses it now; never store or log it."""
        return (os.environ if env is None else env).get(self.name) or None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Serialised as what it holds: the name and whether it is set.
        shown = core_schema.plain_serializer_function_ser_schema(lambda secret: {"name": secret.name, "set": secret.is_set})
        return core_schema.is_instance_schema(cls, serialization=shown)


def var(name: str, default: Any, meaning: str, group: str, shown: str | None = None) -> Any:
    """Declare one environment variable: its ``name``, its ``default`` when unset or empty, what it means.

    ``shown`` is the default as the reference prints it, where the value depends on the machine.
    """
    extra: dict[str, str] = {"group": group}
    if shown is not None:
        extra["shown"] = shown
    return Field(default, alias=name, description=meaning, json_schema_extra=extra)


NonNegativeNumber = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseModel):
    """Every environment variable the project reads: non-secret values, and the secrets as ``Secret``.

    Each field's alias is its variable. Read it with ``Settings.from_env()``; a variable unset or
    empty takes its default.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, validate_default=True, extra="ignore")

    # --- Database and secrets
    database_url: Secret = var(
        DATABASE_URL, None, "PostgreSQL holding `ml_predictions` (a libpq URL); Dagster's own storage uses the same "
        "server. The GPU advisory locks live in this database, so every GPU user must connect to it. Unset: "
        "`forecasting-pipeline with-db` starts an embedded server.", DATABASE)
    dagster_pg_url: Secret = var(
        "DAGSTER_PG_URL", None, "Dagster's run, event-log and schedule storage (`dagster.yaml`); "
        "`forecasting-pipeline with-db` derives it from `DATABASE_URL`.", DATABASE)

    # --- Market data
    instruments_file: str | None = var(
        "INSTRUMENTS_FILE", None, "The instrument universe (symbol, asset class, trading calendar).", MARKET_DATA,
        shown="`forecasting_pipeline/market/instruments.yaml`")
    market_data_source: Literal["sample", "files", "postgres"] = var(
        "MARKET_DATA_SOURCE", "sample", "Where bars come from: `sample` (synthetic), `files` or `postgres`.", MARKET_DATA)
    market_data_path: str | None = var(
        "MARKET_DATA_PATH", None, "Root of the `files` source: `{path}/{1h,1d}/{SYMBOL}.parquet` or `.csv` with "
        "`ts, open, high, low, close, volume` (`ts`: the bar's close, UTC).", MARKET_DATA)
    market_data_table: str = var(
        "MARKET_DATA_TABLE", "ohlcv", "Bar table of the `postgres` source (`symbol, timeframe, ts, open, high, low, "
        "close, volume`).", MARKET_DATA)
    market_data_database_url: Secret = var(
        "MARKET_DATA_DATABASE_URL", None, "Database of the bar table, when it is not `DATABASE_URL`'s.", MARKET_DATA)

    # --- The model and the GPU
    chronos2_model: str = var(
        "CHRONOS2_MODEL", DEFAULT_MODEL_ID, "Hub model id or local checkpoint directory (safetensors only). Unset on "
        "fully embedded defaults: `make run`, `make dev` and `make serve` use a random-weight tiny checkpoint, "
        "and say so.", MODEL)
    chronos2_revision: str | None = var(
        "CHRONOS2_REVISION", None, "Hub revision (commit or tag) to pin; recorded in each row's `model_version`.", MODEL,
        shown="the hub's `main`")
    chronos2_device: Literal["auto", "cuda", "cpu"] = var(
        "CHRONOS2_DEVICE", "auto", "`auto`: the GPU when it is free and has the memory, else the CPU; `cuda`: the GPU "
        "(waits for the lock); `cpu`.", MODEL)
    chronos2_dtype: Literal["auto", "float32", "bfloat16"] = var(
        "CHRONOS2_DTYPE", "auto", "The model's precision: `auto` is `bfloat16` on CPUs with AMX or AVX512-BF16 and "
        "on GPUs of compute capability 8.0 or later, `float32` elsewhere; `float32` or `bfloat16` force one. Each "
        "row's `model_version` records the precision it was computed in.", MODEL)
    min_free_gpu_gb: NonNegativeNumber = var(
        "CHRONOS2_MIN_FREE_GPU_GB", 1.5, "GiB the GPU must have free for `auto` to use it.", MODEL)
    gpu_lock_timeout_s: NonNegativeNumber = var(
        "CHRONOS2_GPU_LOCK_TIMEOUT_S", 60.0, "Seconds to wait for the GPU advisory lock before `auto` falls back to "
        "the CPU.", MODEL)
    gpu_lock_scope: Literal["shared", "per-gpu"] = var(
        "CHRONOS2_GPU_LOCK", "shared", "`shared`: the one GPU lock key Kronos also takes; `per-gpu`: a key per GPU "
        "(Kubernetes).", MODEL)
    gpu_resident: bool = var(
        "CHRONOS2_GPU_RESIDENT", False, "true: the weights stay on the GPU between calls instead of being copied "
        "there from pinned host memory for each call; only for a card no other process needs, since the GPU lock "
        "no longer frees their memory.", MODEL)
    chronos2_compile: CompileSetting = var(
        "CHRONOS2_COMPILE", "auto", "Compile the model with `torch.compile` for CPU calls: `auto` for calls of at "
        f"least {COMPILE_MIN_PASSES} full passes (a backfill run's), where the fused passes repay the compilation; "
        "`on` for every CPU call; `off` never. GPU calls run uncompiled. Forecasts agree with uncompiled ones "
        "within the precision's rounding; a failed compilation is logged and the model runs uncompiled.", MODEL)
    model_server_socket: str | None = var(
        "CHRONOS2_SERVER", None, "Unix socket of `forecasting-pipeline serve`: runs forecast through that process, "
        "which keeps the model loaded.", MODEL)
    model_server_timeout_s: PositiveNumber = var(
        "CHRONOS2_SERVER_TIMEOUT_S", 30.0, "A run's limit, in seconds, to connect to the service and for each answer; "
        "past it, or when the service is not ready, the run loads the model itself and says so in its metadata.",
        MODEL)

    # --- Windows and backfills
    first_window_1h: str = var(
        "FIRST_WINDOW_1H", HOURLY.first_window, "The first hourly window (partition key); move it back to backfill "
        "older history. Every existing key stays valid.", WINDOWS)
    first_window_1d: str = var(
        "FIRST_WINDOW_1D", DAILY.first_window, "The first daily window (partition key).", WINDOWS)
    windows_per_backfill_run_1h: PositiveInt = var(
        "WINDOWS_PER_BACKFILL_RUN_1H", HOURLY.windows_per_backfill_run, "Hourly windows one backfill run covers (one "
        "start-up, one model load); peak memory grows with it.", WINDOWS)
    windows_per_backfill_run_1d: PositiveInt = var(
        "WINDOWS_PER_BACKFILL_RUN_1D", DAILY.windows_per_backfill_run, "Daily windows one backfill run covers.", WINDOWS)
    frames_dir: str = var(
        "FRAMES_DIR", None, "Where the chain's steps leave per-window frames (Arrow IPC) for the next step; on "
        "Kubernetes a volume every pod mounts.", WINDOWS, shown="`$DAGSTER_HOME/storage/frames`")
    frames_retention_days: PositiveInt = var(
        "FRAMES_RETENTION_DAYS", 7, "Days a window's frames are kept when no run released them (a failed or "
        "cut-off run's); a run's own frames are deleted once its rows are committed. `forecasting-pipeline frames "
        "prune` deletes the older ones.", WINDOWS)

    # --- Kubernetes
    k8s_step_pods: bool = var(
        "K8S_STEP_PODS", False, "One pod per step (dagster-k8s's `k8s_job_executor`); the model step's pod gets the "
        "GPU placement below.", KUBERNETES)
    k8s_gpus_per_step: PositiveInt | None = var(
        "K8S_GPUS_PER_STEP", None, "`nvidia.com/gpu` limit of the model step's pod (only with `K8S_STEP_PODS`).",
        KUBERNETES, shown="1 with `K8S_STEP_PODS`")
    k8s_gpu_node_selector: str | None = var(
        "K8S_GPU_NODE_SELECTOR", None, "`key=value[,...]`: the nodes the model step may run on (only with "
        "`K8S_STEP_PODS`).", KUBERNETES)
    k8s_gpu_tolerations: str | None = var(
        "K8S_GPU_TOLERATIONS", None, "`key[=value][:Effect][,...]` (kubectl taint's syntax): taints the model step "
        "tolerates (only with `K8S_STEP_PODS`).", KUBERNETES)

    # --- Kronos
    kronos_batch_url: Secret = var(
        "KRONOS_BATCH_URL", None, "Kronos's batch service; when set, Dagster triggers Kronos's batches and waits for "
        "its rows (the URL may carry credentials).", KRONOS)
    kronos_batch_token: Secret = var(
        "KRONOS_BATCH_TOKEN", None, "Bearer token for Kronos's batch service.", KRONOS)
    kronos_timeout_s: PositiveNumber = var(
        "KRONOS_BATCH_TIMEOUT_S", 900.0, "Seconds to wait for one Kronos batch.", KRONOS)

    # --- The ensemble
    ensemble_lookback: PositiveInt = var(
        "ENSEMBLE_LOOKBACK", 120, "Scored past forecasts per instrument behind its weights and band calibration.",
        ENSEMBLE)
    ensemble_warmup: PositiveInt = var(
        "ENSEMBLE_WARMUP", 20, "Scored past forecasts an instrument needs before its weights leave equal and its band "
        "is calibrated; at most `ENSEMBLE_LOOKBACK`.", ENSEMBLE)
    ensemble_shrinkage: NonNegativeNumber = var(
        "ENSEMBLE_SHRINKAGE", 60.0, "Pseudo-count shrinking an instrument's weights toward the pooled ones "
        "(`n / (n + shrinkage)` its own).", ENSEMBLE)
    ensemble_scheme: Literal["grid", "inverse", "sqrt-inverse"] = var(
        "ENSEMBLE_SCHEME", "grid", "Weights: `grid` (best point of a simplex grid), `inverse` (1/loss) or "
        "`sqrt-inverse` (sqrt(1/loss)).", ENSEMBLE)
    ensemble_kronos_wait_minutes: NonNegativeNumber = var(
        "ENSEMBLE_KRONOS_WAIT_MINUTES", 30.0, "After the chain's rows of a window, how long the ensemble waits for "
        "Kronos's before combining without them.", ENSEMBLE)
    ensemble_band: Literal["adaptive", "recent"] = var(
        "ENSEMBLE_BAND", "adaptive", "The band's calibration: `adaptive` (disjoint forecasts, per horizon group, "
        "tracked online) or `recent` (one factor pair from the span that fitted the weights).", ENSEMBLE)
    ensemble_band_window: PositiveInt = var(
        "ENSEMBLE_BAND_WINDOW", 30, "Scored forecasts that set the band's starting factors, and as many that then move "
        "them; at least `ENSEMBLE_WARMUP`.", ENSEMBLE)
    ensemble_band_gamma: Annotated[float, Field(ge=0, le=MAX_BAND_GAMMA, allow_inf_nan=False)] = var(
        "ENSEMBLE_BAND_GAMMA", 1.0, "How far one scored forecast moves a band factor, on the log scale (0 to 2).",
        ENSEMBLE)
    ensemble_band_groups: PositiveInt = var(
        "ENSEMBLE_BAND_GROUPS", 3, "Horizon groups with band factors of their own.", ENSEMBLE)

    # --- Fine-tuning and promotion
    model_registry_dir: str = var(
        "MODEL_REGISTRY_DIR", None, "Where fine-tuned checkpoints are written (safetensors, one folder each); the "
        "registry in PostgreSQL records their paths. On Kubernetes a volume every pod mounts.", FINETUNE,
        shown="`$DAGSTER_HOME/storage/models`")
    promotion_min_forecasts: PositiveInt = var(
        "PROMOTION_MIN_FORECASTS", 250, "Paired out-of-sample forecasts (challenger and champion, same origins, "
        "scored) the promotion test needs before it may promote.", FINETUNE)
    serve_cadence: Literal["1d", "1h"] = var(
        "SERVE_CADENCE", "1d", "The cadence whose champion `forecasting-pipeline serve` loads when it starts.",
        FINETUNE)

    # --- The forecast service
    serve_host: str = var("SERVE_HOST", DEFAULT_HOST, "Address `forecasting-pipeline serve` binds.", SERVICE)
    serve_port: Port = var("SERVE_PORT", DEFAULT_PORT, "Port of `forecasting-pipeline serve`.", SERVICE)
    predict_api_token: Secret = var(
        PREDICT_API_TOKEN, None, "Bearer token every endpoint but `/healthz` and `/readyz` requires; unset: none "
        "required, and `serve` refuses to bind a non-loopback address.", SERVICE)
    batch_wait_ms: NonNegativeNumber = var(
        "PREDICT_BATCH_WAIT_MS", 20.0, "Longest a request waits for others to share its model call.", SERVICE)
    batch_max_series: PositiveInt = var(
        "PREDICT_BATCH_MAX_SERIES", 32, "Most series in one model call.", SERVICE)
    max_body_bytes: PositiveInt = var(
        "PREDICT_MAX_BODY_BYTES", 8 * 1024 * 1024, "Largest request body, in bytes.", SERVICE)
    max_bars: PositiveInt = var(
        "PREDICT_MAX_BARS", 8192, "Most bars per series (also the largest `context_length`).", SERVICE)
    max_batch_items: PositiveInt = var(
        "PREDICT_MAX_BATCH_ITEMS", 64, "Most items in one batch request.", SERVICE)
    max_queued: PositiveInt = var(
        "PREDICT_MAX_QUEUED", 128, "On-demand series waiting for the model; past it a request is answered 503 with "
        "`Retry-After`.", SERVICE)
    deadline_s: PositiveNumber = var(
        "PREDICT_DEADLINE_S", 5.0, "Longest an on-demand request waits for the model, in seconds, before a 503 with "
        "`Retry-After`.", SERVICE)
    max_cost: PositiveInt = var(
        "PREDICT_MAX_COST", 4_194_304, "Largest cost of one request: series x context x horizon; a larger one is "
        "refused with a 4xx that names the limit.", SERVICE)
    chunk_cost_gpu: PositiveInt = var(
        "SERVE_CHUNK_COST_GPU", 131_072, "Series x context per slice of a run's batch on the GPU; queued on-demand "
        "work goes before the next slice.", SERVICE)
    chunk_cost_cpu: PositiveInt = var(
        "SERVE_CHUNK_COST_CPU", 1_024, "The same on the CPU: one daily series, so that one chunk plus one on-demand call "
        "stays inside the 5 s promise on a small CPU.", SERVICE)
    public_dashboard: bool = var(
        "SERVE_PUBLIC_DASHBOARD", False, "true: the dashboard and `/showcase` answer without the token.", SERVICE)
    service_url: str | None = var(
        "FORECAST_SERVICE_URL", None, "The forecast service `forecasting-pipeline status` checks. When set, a service "
        "that is not ready is a failure; unset, the local address is checked and its absence only reported.", SERVICE,
        shown="`http://SERVE_HOST:SERVE_PORT`")

    # --- Local development and the command line
    dagster_home: str | None = var(
        "DAGSTER_HOME", PROJECT_DAGSTER_HOME, "Dagster's instance folder (its `dagster.yaml`); the command line "
        "passes it on to Dagster.", LOCAL, shown="the repository root, in a source checkout")
    dagster_ui_url: str = var(
        "DAGSTER_UI_URL", "http://127.0.0.1:3000", "The Dagster UI's address, as the command line prints links to it "
        "(`make dev` serves it there).", LOCAL)
    pgdata: str = var(
        "FORECASTING_PGDATA", ".pgdata", "The embedded PostgreSQL's data folder (only when `DATABASE_URL` is unset).",
        LOCAL)
    embedded_database: bool = var(
        EMBEDDED_DATABASE, False, "Set to 1 by `forecasting-pipeline with-db` for its command when it started the "
        "embedded server; not to be set by hand.", LOCAL)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (the process environment by default); unset or empty means the default.

        Raises
        ------
        SettingsError
            Naming every variable whose value is bad, and what is wrong with it.
        """
        env = os.environ if env is None else env
        given = {name: env[name].strip() for name in VARIABLES if (env.get(name) or "").strip()}
        try:
            return cls.model_validate(given)
        except ValidationError as error:
            raise SettingsError([_problem(e) for e in error.errors()]) from None

    @field_validator("*", mode="before")
    @classmethod
    def _secret_as_name_only(cls, value: object, info: Any) -> object:
        field = cls.model_fields[info.field_name]
        if field.annotation is Secret and not isinstance(value, Secret):
            return Secret(field.alias, bool(value))
        return value

    @field_validator("first_window_1h", "first_window_1d")
    @classmethod
    def _is_window_key(cls, value: str, info: Any) -> str:
        cadence = CADENCES[info.field_name.rsplit("_", 1)[1]]
        if not cadence.is_window_key(value):
            raise ValueError(f"must be a {cadence.name} window key like {cadence.first_window!r}")
        return value

    @field_validator("k8s_gpu_node_selector", "k8s_gpu_tolerations")
    @classmethod
    def _parses(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        from forecasting_pipeline.orchestration.placement import parse_node_selector, parse_tolerations

        parse = parse_node_selector if info.field_name == "k8s_gpu_node_selector" else parse_tolerations
        parse(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _folders_under_dagster_home(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        home = values.get("DAGSTER_HOME") or PROJECT_DAGSTER_HOME or tempfile.gettempdir()
        for name, folder in (("FRAMES_DIR", "frames"), ("MODEL_REGISTRY_DIR", "models")):
            if not values.get(name):
                values = {**values, name: str(Path(home) / "storage" / folder)}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        placement = [f.alias for name, f in type(self).model_fields.items()
                     if name in ("k8s_gpus_per_step", "k8s_gpu_node_selector", "k8s_gpu_tolerations")
                     and getattr(self, name) is not None]
        if placement and not self.k8s_step_pods:
            raise ValueError(f"{', '.join(placement)} take effect only with K8S_STEP_PODS=true (one pod per step)")
        if self.ensemble_warmup > self.ensemble_lookback:
            raise ValueError(f"ENSEMBLE_WARMUP ({self.ensemble_warmup}) may not exceed "
                             f"ENSEMBLE_LOOKBACK ({self.ensemble_lookback})")
        if self.ensemble_warmup > self.ensemble_band_window:
            raise ValueError(f"ENSEMBLE_WARMUP ({self.ensemble_warmup}) may not exceed "
                             f"ENSEMBLE_BAND_WINDOW ({self.ensemble_band_window})")
        if self.market_data_source == "files" and not self.market_data_path:
            raise ValueError("MARKET_DATA_SOURCE=files needs MARKET_DATA_PATH, the folder of the bar files")
        if self.market_data_source == "postgres" and not (self.market_data_database_url or self.database_url):
            raise ValueError("MARKET_DATA_SOURCE=postgres needs MARKET_DATA_DATABASE_URL or DATABASE_URL")
        return self

    @property
    def model_configured(self) -> bool:
        """CHRONOS2_MODEL is set: never fall back to the demo checkpoint."""
        return "chronos2_model" in self.model_fields_set

    @property
    def market_data_url_variable(self) -> str:
        """The variable holding the bar table's database URL (never its value)."""
        return self.market_data_database_url.name if self.market_data_database_url else DATABASE_URL

    @property
    def kronos_batch(self) -> bool:
        """Dagster triggers Kronos's batches (KRONOS_BATCH_URL is set)."""
        return self.kronos_batch_url.is_set

    @property
    def first_window(self) -> dict[str, str]:
        return {name: getattr(self, f"first_window_{name}") for name in CADENCES}

    @property
    def windows_per_backfill_run(self) -> dict[str, int]:
        return {name: getattr(self, f"windows_per_backfill_run_{name}") for name in CADENCES}

    @property
    def gpu_placement(self) -> GpuPlacement | None:
        """The model step's pod on Kubernetes; None without step pods, where a pod tag would reach nothing."""
        if not self.k8s_step_pods:
            return None
        from forecasting_pipeline.orchestration.placement import GpuPlacement, parse_node_selector, parse_tolerations

        return GpuPlacement(self.k8s_gpus_per_step or 1, parse_node_selector(self.k8s_gpu_node_selector),
                            parse_tolerations(self.k8s_gpu_tolerations))

    @property
    def forecast_service_url(self) -> str:
        """The forecast service `status` checks: FORECAST_SERVICE_URL, else this machine's SERVE_HOST and SERVE_PORT."""
        return (self.service_url or f"http://{self.serve_host}:{self.serve_port}").rstrip("/")

    def with_model(self, model: str) -> Settings:
        return self.model_copy(update={"chronos2_model": model})

    def windows(self) -> list[Windows]:
        """Both cadences' windows, hourly first."""
        from forecasting_pipeline.orchestration.partitions import cadence_windows

        return [cadence_windows(c, self.first_window[c.name], self.windows_per_backfill_run[c.name])
                for c in (HOURLY, DAILY)]

    def cadence_windows(self, cadence: Cadence | str) -> Windows:
        """One cadence's windows, by cadence or by name."""
        name = cadence if isinstance(cadence, str) else cadence.name
        return next(w for w in self.windows() if w.cadence.name == name)

    def symbols(self) -> list[str]:
        """The universe's symbols, for the per-instrument checks the definitions declare."""
        from forecasting_pipeline.market.instruments import load_instruments

        return [i.symbol for i in load_instruments(self.instruments_file)]


# Every variable Settings reads, by name.
VARIABLES: dict[str, str] = {field.alias: name for name, field in Settings.model_fields.items()}


class OtherVariable(NamedTuple):
    """A variable another tool reads, which the project sets or relies on."""

    name: str
    read_by: str
    meaning: str


OTHER_VARIABLES: tuple[OtherVariable, ...] = (
    OtherVariable("DAGSTER_EVENT_BATCH_SIZE", "Dagster", "Events a run writes per database round trip; the Makefile "
                  "sets 1000, so a backfill run's per-window events go in batches."),
    OtherVariable("HF_HOME", "huggingface_hub", "The model hub's cache; on Kubernetes a folder on the shared volume."),
    OtherVariable("HF_HUB_OFFLINE", "huggingface_hub", "1: never reach the hub, read the cache only (the cluster and "
                  "the tests set it)."),
    OtherVariable("XDG_CACHE_HOME", "platformdirs", "Parent of the cache of local checkpoints' weight digests "
                  "(default `~/.cache`)."),
    OtherVariable("XDG_RUNTIME_DIR", "platformdirs", "A private runtime folder; the Makefile creates `.xdg-runtime` "
                  "so the embedded PostgreSQL starts without warnings."),
    OtherVariable("MPLCONFIGDIR", "matplotlib", "Matplotlib's cache folder; on Kubernetes under /tmp, as the root "
                  "filesystem is read-only."),
    OtherVariable("TQDM_DISABLE", "tqdm", "1: no progress bars in logs (the Makefile and the image set it)."),
    OtherVariable("PYTHONUNBUFFERED", "Python", "1: output reaches logs as it is written (the Makefile and the image "
                  "set it)."),
)


def _problem(error: Mapping[str, Any]) -> str:
    """One line for one validation error: the variable, what its value must be, and the value."""
    if not error["loc"]:  # a rule across variables: its message says it all
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    name = str(error["loc"][0])
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
        message = message if message.startswith(name) else f"{name} {message}"
    else:
        message = f"{name} must be {kind_of(Settings.model_fields[VARIABLES[name]])}"
    return f"{message}, got {error['input']!r}"


def kind_of(field: Any) -> str:
    """What a variable's value must be, in words: the reference's type column and the errors' phrase."""
    annotation, metadata = field.annotation, list(field.metadata)
    options = [a for a in get_args(annotation) if a is not type(None)]
    if options and get_origin(annotation) is not Literal:  # X | None
        annotation = options[0]
    if get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        metadata += [m for item in more for m in getattr(item, "metadata", [item])]
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(get_args(annotation))
    if annotation is Secret:
        return "a secret"
    if annotation is bool:
        return "true or false"
    bounds = {key: getattr(m, key) for m in metadata for key in ("gt", "ge", "le") if hasattr(m, key)}
    noun = {int: "whole number", float: "number"}.get(annotation)
    if noun is None:
        return "text"
    if bounds == {"gt": 0}:
        return f"a positive {noun}"
    if bounds == {"ge": 0}:
        return f"a non-negative {noun}"
    if set(bounds) == {"ge", "le"}:
        return f"a {noun} from {bounds['ge']} to {bounds['le']}"
    return f"a {noun}"


def database_url(env: Mapping[str, str] | None = None) -> str | None:
    """The ml_predictions database (a secret: never logged), for commands that run outside Dagster."""
    return Secret(DATABASE_URL, True).value(env)


def dagster_database_url(env: Mapping[str, str] | None = None) -> str | None:
    """Dagster's own storage (DAGSTER_PG_URL), when it is not the ml_predictions database."""
    return Secret("DAGSTER_PG_URL", True).value(env)


def _chronos2_fields(settings: Settings) -> dict[str, object]:
    return dict(
        model=settings.chronos2_model,
        revision=settings.chronos2_revision,
        device=settings.chronos2_device,
        dtype=settings.chronos2_dtype,
        min_free_memory_gb=settings.min_free_gpu_gb,
        lock_timeout_s=settings.gpu_lock_timeout_s,
        lock_scope=settings.gpu_lock_scope,
        gpu_resident=settings.gpu_resident,
        compile=settings.chronos2_compile,
    )


def chronos2_resource(settings: Settings) -> Chronos2Resource:
    from forecasting_pipeline.orchestration.resources import Chronos2Resource

    return Chronos2Resource(
        **_chronos2_fields(settings),
        lock_database_url=settings.database_url.env_var(),
        server_socket=settings.model_server_socket,
        registry_database_url=settings.database_url.env_var(),
        server_timeout_s=settings.model_server_timeout_s,
    )


def model_registry_resource(settings: Settings) -> ModelRegistryResource:
    from forecasting_pipeline.orchestration.resources import ModelRegistryResource

    return ModelRegistryResource(directory=settings.model_registry_dir, min_forecasts=settings.promotion_min_forecasts)


def chronos2_runner(settings: Settings, env: Mapping[str, str] | None = None) -> Chronos2Runner:
    """The runner of a process outside Dagster (the model server): the runs' settings, the lock's URL from ``env``.

    The checkpoint is ``SERVE_CADENCE``'s champion when the registry (in ``env``'s DATABASE_URL) names
    one, resolved now: the service serves a promotion or rollback from its next start.
    """
    from forecasting_pipeline.forecasting.champion import champion_runner
    from forecasting_pipeline.forecasting.runner import Chronos2Runner
    from forecasting_pipeline.storage.database import DatabaseUnavailableError

    url = settings.database_url.value(env)
    configured = Chronos2Runner(**_chronos2_fields(settings), lock_database_url=url)
    try:
        return champion_runner(configured, url, settings.serve_cadence)
    except DatabaseUnavailableError as exc:
        # The service starts without its database (its read endpoints answer 503 until it is back).
        logging.getLogger(__name__).warning("%s; serving the configured model, not a registered champion", exc)
        return configured


def service_config(
    settings: Settings, env: Mapping[str, str] | None = None, host: str | None = None, port: int | None = None
) -> ServiceConfig:
    """The forecast service's configuration; its bearer token from ``env`` (the process environment)."""
    from forecasting_pipeline.serving.api.config import ServiceConfig

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
        token=settings.predict_api_token.value(env),
        public_dashboard=settings.public_dashboard,
    )


def bar_source(settings: Settings, env: Mapping[str, str] | None = None) -> BarSource:
    """The configured market-data source for a process outside Dagster, its database URL read from ``env``."""
    from forecasting_pipeline.orchestration.resources import MarketDataResource

    postgres = settings.market_data_source == "postgres"
    return MarketDataResource(
        source=settings.market_data_source,
        path=settings.market_data_path,
        database_url=Secret(settings.market_data_url_variable, True).value(env) if postgres else None,
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
        "database": PostgresResource(url=settings.database_url.env_var()),
        "instruments": InstrumentsResource(file=settings.instruments_file),
        "market_data": MarketDataResource(
            source=source,
            path=settings.market_data_path,
            database_url=dg.EnvVar(settings.market_data_url_variable) if source == "postgres" else None,
            table=settings.market_data_table,
        ),
        "chronos2": chronos2_resource(settings),
        "ensemble": ensemble_resource(settings),
        "model_registry": model_registry_resource(settings),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(
            base_dir=settings.frames_dir, retention_days=settings.frames_retention_days,
        ),
    }


def ensemble_resource(settings: Settings) -> EnsembleResource:
    from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource

    return EnsembleResource(
        lookback=settings.ensemble_lookback, warmup=settings.ensemble_warmup, shrinkage=settings.ensemble_shrinkage,
        scheme=settings.ensemble_scheme, kronos_wait_minutes=settings.ensemble_kronos_wait_minutes,
        band=settings.ensemble_band, band_window=settings.ensemble_band_window,
        band_gamma=settings.ensemble_band_gamma, band_groups=settings.ensemble_band_groups,
    )


def kronos_batch_resource(settings: Settings) -> KronosBatchResource:
    from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource

    return KronosBatchResource(
        url=settings.kronos_batch_url.env_var(),
        token=settings.kronos_batch_token.env_var() if settings.kronos_batch_token else None,
        timeout_s=settings.kronos_timeout_s,
        lock_database_url=settings.database_url.env_var(),
        lock_timeout_s=settings.gpu_lock_timeout_s,
    )
