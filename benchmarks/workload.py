"""The benchmark's workload: which windows it runs and the model inputs they give.

Every measurement (bare model, pipeline, naive peer, backfill) reads the same synthetic sample
bars through the project's own functions, so the model sees identical inputs everywhere.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import datetime

from forecasting_pipeline.forecasting.inputs import model_inputs
from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.orchestration.partitions import cadence_windows

# Fixed windows, so runs on different days and machines measure the same data.
WINDOWS = {"1d": "2026-03-02", "1h": "2026-03-02-15:00"}
# 30 daily windows (inclusive range): one run, as BackfillPolicy.multi_run(30) groups them.
BACKFILL_RANGE = ("2026-01-05", "2026-02-03")
BACKFILL_WINDOWS = 30
# Chronos-2 geometry that the token count depends on (config.json of amazon/chronos-2).
PATCH_SIZE = 16
PARAMETERS_FULL = 119_477_664
# Bars a --smoke run reads: the fewest validation keeps (min_history_bars).
SMOKE_CONTEXT = 64


@dataclass(frozen=True)
class Workload:
    cadence: str
    window: str
    context_length: int
    horizon: int

    @property
    def window_end(self) -> datetime:
        return cadence_windows(CADENCES[self.cadence]).end_of(self.window)


def window_inputs(workload: Workload) -> tuple[list, list[dict]]:
    """(keys, inputs) for one window: one input per instrument, target plus two past covariates."""
    frames = [
        sample_bars(instrument, workload.cadence, workload.window_end, workload.context_length)
        for instrument in load_instruments()
    ]
    import polars as pl

    covariates = engineer_covariates(pl.concat(frames))
    return model_inputs(covariates, workload.window, workload.context_length)


def tokens(inputs: list[dict], context_length: int, horizon: int) -> int:
    """Tokens the encoder processes for one call.

    Each variate (target or covariate) is one sequence of ceil(context/16) context patches, one
    REG token and ceil(horizon/16) future patches (chronos2/model.py: ``encode`` concatenates
    patched context, the REG embedding and the future patch embeddings).
    """
    per_variate = math.ceil(context_length / PATCH_SIZE) + 1 + math.ceil(horizon / PATCH_SIZE)
    variates = sum(1 + len(x.get("past_covariates", {})) for x in inputs)
    return variates * per_variate


def script_arguments(description: str) -> tuple[argparse.Namespace, Workload]:
    """The command line shared by the plain benchmark scripts: checkpoint, window, context, horizon, device, dtype.

    ``--smoke`` fills in what is not given: the tiny checkpoint and the daily window at a 64-bar context.
    """
    from common import SMOKE_HELP, checkpoint

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--cadence", choices=sorted(CADENCES))
    parser.add_argument("--window")
    parser.add_argument("--context", type=int)
    parser.add_argument("--horizon", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.cadence = args.cadence or "1d"
        args.checkpoint = args.checkpoint or str(checkpoint("tiny"))
        args.window = args.window or WINDOWS[args.cadence]
        args.context = args.context or SMOKE_CONTEXT
        args.horizon = args.horizon or CADENCES[args.cadence].horizon
    missing = [name for name in ("checkpoint", "cadence", "window", "context", "horizon") if getattr(args, name) is None]
    if missing:
        parser.error(f"--{', --'.join(missing)} required (or --smoke)")
    return args, Workload(args.cadence, args.window, args.context, args.horizon)
