"""A code location for the backfill tests: the daily chain and ensemble, with every resource read from the environment at run time.

Backfill runs are launched by the Dagster backfill machinery, which reconstructs the job from this
file rather than from objects a test holds, so each resource names an environment variable that the
test sets (``dg.EnvVar`` is resolved when a run starts, not when this file is imported).
"""

from datetime import timedelta

import dagster as dg

from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, build_chain
from forecasting_pipeline.orchestration.ensemble_assets import EnsembleResource, build_ensemble
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import (
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    PostgresResource,
)
from forecasting_pipeline.orchestration.schedules import chain_job

DAILY_WINDOWS = cadence_windows(DAILY)

defs = dg.Definitions(
    # The universe comes from INSTRUMENTS_FILE at run time; its checks are declared for these two.
    assets=[*build_chain(DAILY_WINDOWS, ["BTC-USD", "AAPL"]), *build_ensemble(DAILY_WINDOWS, timedelta(minutes=30))],
    jobs=[chain_job(DAILY_WINDOWS)],
    resources={
        "database": PostgresResource(url=dg.EnvVar("DATABASE_URL")),
        "instruments": InstrumentsResource(file=dg.EnvVar("INSTRUMENTS_FILE")),
        "market_data": MarketDataResource(source="sample"),
        "chronos2": Chronos2Resource(model=dg.EnvVar("CHRONOS2_MODEL")),
        "ensemble": EnsembleResource(),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=dg.EnvVar("FRAMES_DIR")),
    },
    executor=dg.in_process_executor,
)
