"""GPU check for sharing one card with Kronos (issue 3): latency and peak memory on CUDA, and the OOM path.

    python benchmarks/gpu_check.py --json gpu_check.json

On a CUDA machine it
  1. writes a full-size (120M-parameter) RANDOM-WEIGHT Chronos-2 checkpoint: the published
     geometry, so the compute and memory cost of the real model; its forecasts mean nothing;
  2. builds the 23-instrument batch from the sample source (target + 2 past covariates) at the
     daily (1024 bars, horizon 10) and hourly (2048 bars, horizon 24) context lengths;
  3. for float32 and bfloat16: loads the model on CUDA, warms up, then times RUNS batched calls
     (torch.cuda.synchronize around each) and reads torch.cuda.max_memory_allocated, reset
     before each configuration (weights included, since they stay allocated);
  4. caps this process's GPU memory with torch.cuda.set_per_process_memory_fraction just above
     the float32 weights, so the forecast runs out of memory, and shows gpu.run_on_device
     finishing the same batch on the CPU.
It prints a compact table and, with --json, writes every figure to that file. Without CUDA it
says "no CUDA" and exits 0. It needs torch (CUDA build), chronos-forecasting, numpy and polars;
with --inputs it reads the batches from a file instead of building them, so the GPU machine
(no network, a 64 MiB carry) needs neither exchange_calendars nor psycopg nor Dagster:

    python benchmarks/gpu_check.py --save-inputs benchmarks/.cache/gpu_inputs.npz   # here
    python3 benchmarks/gpu_check.py --inputs benchmarks/.cache/gpu_inputs.npz --json OUT.json   # there
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024**2
# The target from the issue: the 23-instrument batch must fit beside Kronos on an 8 GB card.
PEAK_TARGET_BYTES = int(1.5 * 1024**3)
# The cadence defaults of forecasting_pipeline/cadences.py (not imported: it needs Dagster),
# with one window end per cadence that the sample source fills.
CASES = {
    "1d": {"context_length": 1024, "horizon": 10, "end": datetime(2025, 6, 3, tzinfo=timezone.utc)},
    "1h": {"context_length": 2048, "horizon": 24, "end": datetime(2026, 3, 2, 16, tzinfo=timezone.utc)},
}


def build_inputs(cadence: str, context_length: int, end: datetime) -> list[dict]:
    """One model input per instrument of the shipped universe, as the forecast asset builds them."""
    import polars as pl

    from forecasting_pipeline.forecasting.inputs import model_inputs
    from forecasting_pipeline.market.features import engineer_covariates
    from forecasting_pipeline.market.instruments import load_instruments
    from forecasting_pipeline.market.sources.sample import sample_bars

    frames = [engineer_covariates(sample_bars(i, cadence, end, context_length)) for i in load_instruments()]
    _keys, inputs = model_inputs(pl.concat(frames), end.isoformat(), context_length)
    return inputs


def save_inputs(path: Path) -> None:
    """Write both cadences' batches, built from the sample source, to an .npz file."""
    arrays = {}
    for cadence, case in CASES.items():
        for i, item in enumerate(build_inputs(cadence, case["context_length"], case["end"])):
            arrays[f"{cadence}/{i}/target"] = item["target"]
            for name, values in item["past_covariates"].items():
                arrays[f"{cadence}/{i}/{name}"] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_inputs(path: Path) -> dict[str, list[dict]]:
    """Read the batches written by ``save_inputs`` back into model inputs, per cadence."""
    inputs: dict[str, dict[int, dict]] = {}
    with np.load(path) as data:
        for key in data.files:
            cadence, index, name = key.split("/")
            item = inputs.setdefault(cadence, {}).setdefault(int(index), {"past_covariates": {}})
            if name == "target":
                item["target"] = data[key]
            else:
                item["past_covariates"][name] = data[key]
    return {cadence: [items[i] for i in sorted(items)] for cadence, items in inputs.items()}


def measure(checkpoint: Path, dtype: str, inputs: list[dict], horizon: int, context_length: int, runs: int) -> dict:
    """Load on CUDA in ``dtype``, warm up once, then time ``runs`` batched calls."""
    import torch

    from forecasting_pipeline.forecasting.model import load_chronos2
    from forecasting_pipeline.forecasting.predict import predict_quantiles

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    loaded = load_chronos2(str(checkpoint), device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    predict_quantiles(loaded.pipeline, inputs, horizon, context_length)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    seconds, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = predict_quantiles(loaded.pipeline, inputs, horizon, context_length)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated()
    del loaded
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "dtype": dtype,
        "series": len(inputs),
        "context_length": context_length,
        "horizon": horizon,
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "runs": runs,
        "weights_mib": round(weights / MIB, 1),
        "peak_allocated_mib": round(peak / MIB, 1),
        "peak_under_1_5_gib": peak < PEAK_TARGET_BYTES,
        "_quantiles": result,
    }


PARAMETERS_FULL = 119_477_664


def model_tokens(inputs: list[dict], context_length: int, horizon: int) -> int:
    """Encoder tokens of one call: per variate, ceil(context/16) patches + 1 REG + ceil(horizon/16)."""
    per_variate = math.ceil(context_length / 16) + 1 + math.ceil(horizon / 16)
    return sum(1 + len(x["past_covariates"]) for x in inputs) * per_variate


def matmul_tflops(dtype, n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def batching(checkpoint: Path, inputs: list[dict], horizon: int, context_length: int, runs: int, device: str = "cuda") -> dict:
    """fp32 on CUDA: one batched call vs one call per instrument, and 30 windows in one call vs 30 calls."""
    import torch

    from forecasting_pipeline.forecasting.model import load_chronos2
    from forecasting_pipeline.forecasting.predict import predict_quantiles

    loaded = load_chronos2(str(checkpoint), device=device, dtype="float32")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()  # warm-up for these shapes
        sync()
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            sync()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    batched = timed(lambda: predict_quantiles(loaded.pipeline, inputs, horizon, context_length))
    one_by_one = timed(lambda: [predict_quantiles(loaded.pipeline, [x], horizon, context_length) for x in inputs])
    windows = inputs * 30
    backfill = timed(lambda: predict_quantiles(loaded.pipeline, windows, horizon, context_length, batch_size=256))
    tokens = model_tokens(inputs, context_length, horizon)
    fp32_peak, bf16_peak = (
        (matmul_tflops(torch.float32), matmul_tflops(torch.bfloat16)) if device == "cuda" else (float("nan"),) * 2
    )
    del loaded
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "batched_seconds": batched,
        "one_by_one_seconds": one_by_one,
        "one_by_one_over_batched": one_by_one / batched,
        "backfill_30_windows_seconds": backfill,
        "backfill_over_30_batched": backfill / (30 * batched),
        "tokens": tokens,
        "model_tflops": 2 * PARAMETERS_FULL * tokens / batched / 1e12,
        "model_tflops_backfill": 2 * PARAMETERS_FULL * tokens * 30 / backfill / 1e12,
        "matmul_fp32_tflops": fp32_peak,
        "matmul_bf16_tflops": bf16_peak,
    }


def force_oom(checkpoint: Path, inputs: list[dict], horizon: int, context_length: int, weights_mib: float) -> dict:
    """Cap this process's GPU memory just above the weights and run through gpu.run_on_device."""
    import torch

    from forecasting_pipeline.forecasting.device import GpuSettings, run_on_device
    from forecasting_pipeline.forecasting.model import load_chronos2
    from forecasting_pipeline.forecasting.predict import predict_quantiles

    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = int((weights_mib + 16) * MIB)
    torch.cuda.set_per_process_memory_fraction(cap / total)
    models = {}

    def work(device: str):
        models[device] = load_chronos2(str(checkpoint), device=device, dtype="float32")
        return predict_quantiles(models[device].pipeline, inputs, horizon, context_length)

    try:
        # min_free_memory_gb=0: the cap is this process's own, mem_get_info does not see it.
        quantiles, record = run_on_device(
            work, GpuSettings(device="auto", min_free_memory_gb=0.0), release_cuda=lambda: models.pop("cuda", None)
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {
        "cap_mib": round(cap / MIB, 1),
        "device_used": record.device,
        "fell_back": record.fell_back,
        "reason": record.reason,
        "wall_seconds": round(record.wall_seconds, 3),
        "peak_allocated_before_oom_mib": round((record.peak_gpu_memory_bytes or 0) / MIB, 1),
        "finished_on_cpu": record.device == "cpu" and quantiles.shape == (len(inputs), horizon, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per configuration after one warm-up")
    parser.add_argument("--inputs", type=Path, help="read the batches from this .npz (written by --save-inputs)")
    parser.add_argument("--save-inputs", type=Path, help="write the batches to this .npz and exit")
    parser.add_argument("--smoke", action="store_true", help="the tiny random checkpoint and one timed call: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs = 1
    if args.save_inputs:
        save_inputs(args.save_inputs)
        print(f"wrote {args.save_inputs}")
        return 0

    import torch

    report: dict = {"torch": torch.__version__, "python": platform.python_version()}
    if not torch.cuda.is_available():
        report["cuda"] = False
        print(f"no CUDA: torch {torch.__version__} sees no GPU on this machine; nothing was measured. "
              "Run this on a CUDA machine for the figures.")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0

    from importlib.metadata import version

    from forecasting_pipeline.forecasting.model import write_random_checkpoint

    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    report.update(cuda=True, gpu=props.name, gpu_total_mib=round(total / MIB), gpu_free_mib_at_start=round(free / MIB),
                  chronos_forecasting=version("chronos-forecasting"), weights="RANDOM (full published geometry)")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        size = "tiny" if args.smoke else "full"
        checkpoint = write_random_checkpoint(Path(tmp) / f"chronos2-{size}", size)
        inputs = load_inputs(args.inputs) if args.inputs else {
            c: build_inputs(c, case["context_length"], case["end"]) for c, case in CASES.items()
        }
        for cadence, case in CASES.items():
            by_dtype = {}
            for dtype in ("float32", "bfloat16"):
                row = measure(checkpoint, dtype, inputs[cadence], case["horizon"], case["context_length"], args.runs)
                by_dtype[dtype] = row.pop("_quantiles")
                results.append({"cadence": cadence, **row})
            # How far bf16 moves the stored p50 (relative to price), to judge it as a speed option.
            p50_32, p50_16 = by_dtype["float32"][..., 1], by_dtype["bfloat16"][..., 1]
            results[-1]["bf16_max_rel_diff_p50"] = float(abs(p50_16 - p50_32).max() / abs(p50_32).max())
        batch = batching(checkpoint, inputs["1d"], CASES["1d"]["horizon"], CASES["1d"]["context_length"], args.runs)
        weights_fp32 = next(r["weights_mib"] for r in results if r["dtype"] == "float32")
        oom = force_oom(checkpoint, inputs["1d"], CASES["1d"]["horizon"], CASES["1d"]["context_length"], weights_fp32)
    report.update(results=results, batching_1d_fp32=batch, oom_fallback=oom, total_seconds=round(time.perf_counter() - started, 1))

    print(f"\n{props.name}, torch {torch.__version__}, {len(inputs['1d'])} instruments, random full-size weights")
    print(f"{'cadence':<7} {'dtype':<9} {'context':>7} {'H':>3} {'median s':>9} {'weights MiB':>11} {'peak MiB':>9} {'<1.5GiB':>7}")
    for r in results:
        print(f"{r['cadence']:<7} {r['dtype']:<9} {r['context_length']:>7} {r['horizon']:>3} {r['median_seconds']:>9.4f} "
              f"{r['weights_mib']:>11.1f} {r['peak_allocated_mib']:>9.1f} {str(r['peak_under_1_5_gib']):>7}")
    print("1d fp32 batching: " + ", ".join(f"{k} {v:.4g}" for k, v in batch.items()))
    print(f"OOM path (cap {oom['cap_mib']} MiB): ran on {oom['device_used']}, fell_back={oom['fell_back']}, "
          f"{oom['wall_seconds']} s; reason: {oom['reason']}")
    print(f"total {report['total_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if oom["finished_on_cpu"] and oom["fell_back"] else 1


if __name__ == "__main__":
    sys.exit(main())
