"""Fine-tuning Chronos-2: its cost per 100 steps for the tiny and the published geometry, and the
out-of-sample gain of a fine-tuned challenger over its base on real bars.

    python benchmarks/finetune.py [--smoke] [--only cost|gain] [--device cpu|auto|cuda] [--steps N] [--json FILE]

Cost: for each geometry (``tiny``; ``full``, the published 119.5M-parameter one with random
weights) and each mode (LoRA, full), one ``forecasting.finetune.fine_tune`` run of ``--steps``
steps on GOOG's daily covariates before the cutoff, in a process of its own: seconds per 100 steps
(the median step, times 100), the whole run's seconds, and the process's peak memory (RSS, the
imports it starts with included; on CUDA also the peak GPU memory). Ratios full/tiny are measured
in the same run, with torch's default threads (one thread in --smoke).

Gain: the random-weight tiny checkpoint (the base) and a challenger fine-tuned from it on the bars
before the cutoff forecast every origin after the cutoff (daily GOOG; hourly EUR/USD unless
--smoke); the forecasts are scored against the realised closes (``scoring.losses``) and compared
by the promotion test (``scoring.promotion``): scaled MAE of p50, scaled quantile loss, one-sided
Diebold-Mariano p-values, p10-p90 coverage, and the random walk's scaled MAE on the same origins.

The published Chronos-2 weights cannot be loaded where this runs (no model hub), so the base is a
random-weight model and the gain measured is that of the fine-tuning machinery, not of the
published model. --smoke: tiny geometry only, a few steps, GOOG only, in seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from forecasting_pipeline.forecasting.finetune import TrainingParams, fine_tune, training_split  # noqa: E402
from forecasting_pipeline.forecasting.inputs import usable_model_inputs  # noqa: E402
from forecasting_pipeline.forecasting.model import load_chronos2, write_random_checkpoint  # noqa: E402
from forecasting_pipeline.forecasting.predict import predict_quantiles  # noqa: E402
from forecasting_pipeline.forecasting.runner import Chronos2Runner  # noqa: E402
from forecasting_pipeline.market.features import engineer_covariates  # noqa: E402
from forecasting_pipeline.scoring.losses import per_forecast_losses  # noqa: E402
from forecasting_pipeline.scoring.promotion import pair_losses, promotion_test  # noqa: E402
from forecasting_pipeline_tests.conftest import _real_bars  # noqa: E402

# Real history shipped by `backtesting`: each series' cutoff leaves the months after it out of sample.
SERIES = {
    "GOOG": {"cutoff": datetime(2012, 6, 1, tzinfo=timezone.utc), "bar": timedelta(days=1), "horizon": 10},
    "EURUSD": {"cutoff": datetime(2017, 12, 1, tzinfo=timezone.utc), "bar": timedelta(hours=1), "horizon": 24},
}
HONESTY = ("The published Chronos-2 weights cannot be loaded here (no model hub): the base is a random-weight "
           "model, so this gain is that of the fine-tuning machinery, not of the published model.")


def _cost_child(geometry: str, mode: str, steps: int, context: int, device: str, queue) -> None:
    """One fine-tuning run in a fresh process, so that its peak RSS is its own."""
    covariates = engineer_covariates(_real_bars("GOOG"))
    params = TrainingParams(mode=mode, learning_rate=1e-5 if mode == "lora" else 1e-6, steps=steps, batch_size=32,
                            context_length=context, horizon=10, validation_windows=1)
    split = training_split(covariates, SERIES["GOOG"]["cutoff"], params)
    with tempfile.TemporaryDirectory() as folder:
        base = write_random_checkpoint(Path(folder) / "base", geometry)
        done = fine_tune(Chronos2Runner(model=str(base), device=device), split, params, Path(folder) / "tuned")
    queue.put({
        "geometry": geometry, "mode": mode, "steps": steps, "context": context, "batch_size": 32,
        "device": done.device_run.device, "seconds_per_100_steps": 100 * (done.seconds_per_step or float("nan")),
        "run_seconds": done.train_seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": (done.device_run.peak_gpu_memory_bytes or 0) / 1024**2 or None,
    })


def measure_cost(geometries: list[str], modes: list[str], steps: int, context: int, device: str) -> list[dict]:
    # Forked, so each child starts with this process's imports loaded: its peak RSS includes them
    # (printed first), and the difference between geometries is the fine-tuning's own.
    fork = multiprocessing.get_context("fork")
    print(f"  this process before any fine-tuning: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB RSS")
    rows = []
    for geometry in geometries:
        for mode in modes:
            queue = fork.Queue()
            child = fork.Process(target=_cost_child, args=(geometry, mode, steps, context, device, queue))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"the {geometry}/{mode} fine-tuning run failed (exit {child.exitcode})")
            rows.append(queue.get())
            print(f"  {geometry:<5} {mode:<4}: {rows[-1]['seconds_per_100_steps']:8.2f} s per 100 steps, "
                  f"peak RSS {rows[-1]['peak_rss_mb']:7.0f} MB ({rows[-1]['device']})", flush=True)
    return rows


def _forecasts(pipeline, covariates: pl.DataFrame, origins: list[int], horizon: int, context: int, name: str):
    ts = covariates["ts"].to_list()
    inputs = []
    for i in origins:
        _, series, _ = usable_model_inputs(covariates.slice(max(0, i + 1 - context), min(context, i + 1)), "b", context)
        inputs += series
    quantiles = predict_quantiles(pipeline, inputs, horizon, context)
    rows = [(name, covariates["symbol"][0], ts[i], step + 1, ts[i + step + 1], *quantiles[j, step])
            for j, i in enumerate(origins) for step in range(horizon)]
    return pl.DataFrame(rows, schema=["model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90"], orient="row")


def measure_gain(symbol: str, steps: int, context: int, max_origins: int | None) -> dict:
    spec = SERIES[symbol]
    bars = _real_bars(symbol)
    covariates = engineer_covariates(bars)
    params = TrainingParams(mode="full", learning_rate=1e-2, steps=steps, batch_size=32, context_length=context,
                            horizon=spec["horizon"], validation_windows=4)
    split = training_split(covariates, spec["cutoff"], params)
    ts = covariates["ts"].to_list()
    origins = [i for i, t in enumerate(ts) if t >= spec["cutoff"] and i + spec["horizon"] < len(ts)][:max_origins]
    with tempfile.TemporaryDirectory() as folder:
        base = write_random_checkpoint(Path(folder) / "base", "tiny")
        done = fine_tune(Chronos2Runner(model=str(base), device="cpu"), split, params, Path(folder) / "tuned")
        frames = [_forecasts(load_chronos2(str(path)).pipeline, covariates, origins, spec["horizon"], context, name)
                  for name, path in (("base", base), ("challenger", done.path))]
    losses = per_forecast_losses(pl.concat(frames), bars.select("symbol", "ts", "close"))
    # The random walk (last close) on the same origins: what a useful model has to beat.
    random_walk = float(losses.filter(pl.col("model_name") == "baseline-random-walk")["scaled_abs_error"].mean())
    mine = losses.filter(pl.col("model_name") == "challenger").with_columns(pl.lit("challenger").alias("model_version"))
    theirs = losses.filter(pl.col("model_name") == "base")
    test = promotion_test(pair_losses(mine, theirs, "base"), "bench", spec["cutoff"], "challenger", spec["bar"], 1, "base")
    print(f"  {symbol}: fine-tuned {steps} steps on {split.bars} bars before {spec['cutoff']:%Y-%m-%d}")
    for line in test.lines():
        print(f"    {line}")
    print(f"    (the random walk's scaled MAE on the same origins: {random_walk:.4f})")
    evidence = test.evidence()
    return {"symbol": symbol, "steps": steps, "training_bars": split.bars, "origins": len(origins),
            "scaled_mae": {"base": evidence["champion"]["scaled_mae"], "challenger": evidence["challenger"]["scaled_mae"],
                           "random_walk": random_walk},
            "quantile_loss": {"base": evidence["champion"]["mean_pinball"],
                              "challenger": evidence["challenger"]["mean_pinball"]},
            "coverage": {"base": evidence["champion"]["coverage"], "challenger": evidence["challenger"]["coverage"]},
            "scaled_mae_p_value": (evidence["scaled_mae_test"] or {}).get("p_value"),
            "quantile_loss_p_value": (evidence["pinball_test"] or {}).get("p_value"), "passed": test.passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny geometry, a few steps, GOOG only: seconds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "auto", "cuda"], help="where the cost runs train")
    parser.add_argument("--steps", type=int, default=None, help="steps per cost run (default 20; smoke 5)")
    parser.add_argument("--only", choices=["cost", "gain"], help="measure only the cost or only the gain")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    steps = args.steps or (5 if args.smoke else 20)
    if args.smoke:
        import torch

        torch.set_num_threads(1)  # seconds, not minutes, when the other core is busy
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {HONESTY}", flush=True)
    cost, gain = [], []
    if args.only != "gain":
        cost = _cost(args, steps)
    if args.only != "cost":
        print("gain of a challenger fine-tuned from the random start, out of sample:", flush=True)
        gain = [measure_gain("GOOG", 60 if args.smoke else 200, 64 if args.smoke else 256, 40 if args.smoke else None)]
        if not args.smoke:
            gain.append(measure_gain("EURUSD", 200, 256, 1500))
    print(f"done in {time.perf_counter() - started:.0f}s; {HONESTY}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cost": cost, "gain": gain, "note": HONESTY,
                                               "load_average": os.getloadavg()[0]}, indent=2, default=str))
    return 0


def _cost(args: argparse.Namespace, steps: int) -> list[dict]:
    print(f"cost: {steps} steps per run, batch 32 series, GOOG daily covariates", flush=True)
    cost = measure_cost(["tiny"] if args.smoke else ["tiny", "full"], ["lora"] if args.smoke else ["lora", "full"],
                        steps, 64 if args.smoke else 512, args.device)
    by = {(r["geometry"], r["mode"]): r for r in cost}
    for mode in ("lora", "full"):
        if ("full", mode) in by:
            ratio = by[("full", mode)]["seconds_per_100_steps"] / by[("tiny", mode)]["seconds_per_100_steps"]
            print(f"  {mode}: published geometry / tiny = {ratio:.1f}x per step", flush=True)
    return cost


if __name__ == "__main__":
    sys.exit(main())
