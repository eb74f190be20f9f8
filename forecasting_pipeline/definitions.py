"""Assembles the Dagster definitions: both cadence chains, their jobs and schedules, and the resources.

Non-secret settings are read from the environment when the code location loads; secrets
(database URLs) only through ``dg.EnvVar``, resolved at run time and hidden in the UI.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dagster as dg

from forecasting_pipeline.heap import freeze_import_time_objects, imports_without_collection

# What a run imports to load these definitions (polars, pandas, exchange_calendars, psycopg)
# lives until the process exits: no collections while it loads, and none over it after (heap.py).
with imports_without_collection():
    from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, build_chain
    from forecasting_pipeline.orchestration.cadences import DAILY, HOURLY
    from forecasting_pipeline.forecasting.model import DEFAULT_MODEL_ID
    from forecasting_pipeline.storage.database import PostgresResource
    from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
    from forecasting_pipeline.orchestration.kronos_assets import KronosBatchResource, build_kronos_batch, kronos_job, kronos_schedule
    from forecasting_pipeline.orchestration.resources import Chronos2Resource, InstrumentsResource, MarketDataResource
    from forecasting_pipeline.orchestration.scoring_assets import build_scoring, scoring_schedule
    from forecasting_pipeline.orchestration.schedules import daily_job, daily_schedule, hourly_job, hourly_schedule


def _env_or(name: str, default):
    """An EnvVar when the variable is set (so the UI shows where the value came from), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def default_resources() -> dict[str, object]:
    frames_dir = Path(os.environ.get("DAGSTER_HOME") or tempfile.gettempdir()) / "storage" / "frames"
    market_db = "MARKET_DATA_DATABASE_URL" if os.environ.get("MARKET_DATA_DATABASE_URL") else "DATABASE_URL"
    source = os.environ.get("MARKET_DATA_SOURCE", "sample")
    return {
        "database": PostgresResource(url=dg.EnvVar("DATABASE_URL")),
        "instruments": InstrumentsResource(file=_env_or("INSTRUMENTS_FILE", None)),
        "market_data": MarketDataResource(
            source=source,
            path=_env_or("MARKET_DATA_PATH", None),
            database_url=dg.EnvVar(market_db) if source == "postgres" else None,
            table=os.environ.get("MARKET_DATA_TABLE", "ohlcv"),
        ),
        "chronos2": Chronos2Resource(
            model=_env_or("CHRONOS2_MODEL", DEFAULT_MODEL_ID),
            revision=_env_or("CHRONOS2_REVISION", None),
            # Device and GPU sharing (gpu.py); plain values, since enum and float fields take no EnvVar.
            device=os.environ.get("CHRONOS2_DEVICE", "auto"),
            dtype=os.environ.get("CHRONOS2_DTYPE", "float32"),
            min_free_memory_gb=float(os.environ.get("CHRONOS2_MIN_FREE_GPU_GB", "1.5")),
            lock_timeout_s=float(os.environ.get("CHRONOS2_GPU_LOCK_TIMEOUT_S", "60")),
            lock_database_url=dg.EnvVar("DATABASE_URL"),
            server_socket=_env_or("CHRONOS2_SERVER", None),
        ),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=str(frames_dir)),
    }


def kronos_definitions() -> dg.Definitions:
    """The optional Kronos batch trigger (kronos_batches.py): present only when KRONOS_BATCH_URL is set."""
    if not os.environ.get("KRONOS_BATCH_URL"):
        return dg.Definitions()
    jobs = {cadence: kronos_job(cadence) for cadence in (HOURLY, DAILY)}
    return dg.Definitions(
        assets=[asset for cadence in jobs for asset in build_kronos_batch(cadence)],
        jobs=list(jobs.values()),
        schedules=[kronos_schedule(cadence, job) for cadence, job in jobs.items()],
        resources={"kronos_batch": KronosBatchResource(
            url=dg.EnvVar("KRONOS_BATCH_URL"),
            token=_env_or("KRONOS_BATCH_TOKEN", None),
            timeout_s=float(os.environ.get("KRONOS_BATCH_TIMEOUT_S", "900")),
            lock_database_url=dg.EnvVar("DATABASE_URL"),
            lock_timeout_s=float(os.environ.get("CHRONOS2_GPU_LOCK_TIMEOUT_S", "60")),
        )},
    )


defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[*build_chain(HOURLY), *build_chain(DAILY), *build_scoring(HOURLY), *build_scoring(DAILY)],
        jobs=[hourly_job, daily_job],
        # Each scoring schedule brings its own job (forecast_scores_<cadence>_job).
        schedules=[hourly_schedule, daily_schedule, scoring_schedule(HOURLY), scoring_schedule(DAILY)],
        resources=default_resources(),
        # One process per run, not per step: a step process costs seconds of imports each.
        executor=dg.in_process_executor,
    ),
    kronos_definitions(),
)

# The definitions themselves live as long as the code location.
freeze_import_time_objects()
