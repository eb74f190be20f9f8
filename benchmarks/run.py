"""Performance benchmark: the pipeline against the model's own cost, and the model against the machine.

Measures in one run, on one machine, with one full-size random-weight Chronos-2 checkpoint
(the published geometry, so the real compute cost):

1. bare model: one batched ``predict_quantiles`` for the 23 instruments (target + 2 covariates), daily
   and hourly, in float32 and bfloat16, and how far bfloat16 moves the forecasts (in the series' std);
2. pipeline: one daily and one hourly window through Dagster's CLI against real PostgreSQL,
   process start to rows committed (the median of --reps runs), split into start-up, data, features,
   model and write; once with the model loaded in the run (as ``make run``), once through a warm
   forecast service (the socket of ``forecasting-pipeline serve``), and Dagster's own floor (one no-op asset,
   same CLI);
3. naive peer: ``benchmarks/naive.py``, one model call per symbol and one INSERT per row;
4. backfill: 30 daily windows in one run, as ``BackfillPolicy.multi_run(30)`` groups them, held
   against the daily bare model timed before and again after it (the machine drifts over minutes);
5. machine limit: fp32/bf16 matmul GFLOP/s against the model's 2 x params x tokens / seconds, for
   each dtype and for the one ``CHRONOS2_DTYPE=auto`` picks here (``model_over_dtype_peak``);
6. backfill cost beyond the model: one backfill run per cadence as large as the policy makes them,
   on the tiny checkpoint, per window and split by phase (``backfill_overhead_per_window_s_1d``/``_1h``);
7. peak RSS of the pipeline and backfill processes.

    python benchmarks/run.py [--quick] [--json FILE] [--device cpu|cuda]
    python benchmarks/run.py --only overhead [--json FILE] [--windows N] [--profile DIR]  # stage 6 alone
    python benchmarks/run.py --only model [--quick] [--json FILE]  # stages 1 and 5: model per dtype, peak
    python benchmarks/run.py --year [--json FILE]              # a year of hourly windows, estimated
    python benchmarks/run.py --smoke                           # tiny model, few windows: checks it runs

``--quick`` shortens the context (daily 256, hourly 512 bars) for every measurement alike, so the
ratios compare like with like, and leaves out the hourly in-run pipeline and hourly fresh-process
model; without it the cadences' configured contexts (1024, 2048) are used. ``--year`` measures
the model's series per second at the batch size a backfill run uses on this device, and the cost
beyond the model of an hourly backfill run, and prints the estimate for 8,760 hourly windows.
PostgreSQL: ``DATABASE_URL`` when set, else an embedded server; a fresh database is created and
dropped. The checkpoints and server data are cached in ``benchmarks/.cache/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent


def command(name: str) -> str:
    """A console script beside this interpreter (the venv), else on PATH (see gpu_machine.sh)."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        sys.exit(f"{name} is neither beside {sys.executable} nor on PATH")
    return found

if __name__ == "__main__":
    # Started before this process imports anything heavy: see launcher.py for why.
    LAUNCHER = subprocess.Popen(
        [sys.executable, str(HERE / "launcher.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import CACHE, CHECKPOINT, SMOKE_HELP, TINY_CHECKPOINT, checkpoint, fresh_database  # noqa: E402
from workload import (  # noqa: E402
    BACKFILL_RANGE,
    BACKFILL_WINDOWS,
    SMOKE_CONTEXT,
    WINDOWS,
    Workload,
    tokens,
    window_inputs,
)

from forecasting_pipeline.market.cadences import CADENCES  # noqa: E402
from forecasting_pipeline.orchestration.partitions import DEFAULT_WINDOWS_PER_BACKFILL_RUN  # noqa: E402

DTYPES = ("float32", "bfloat16")
QUICK_CONTEXT = {"1d": 256, "1h": 512}
# The first window of each overhead range, and the windows' spacing.
_OVERHEAD_FIRST = {"1d": datetime(2025, 1, 1), "1h": datetime(2026, 3, 2)}
_KEY_FORMAT = {"1d": ("%Y-%m-%d", timedelta(days=1)), "1h": ("%Y-%m-%d-%H:%M", timedelta(hours=1))}
HOURS_PER_YEAR = 8760
INSTRUMENTS = 23
# A year's hourly backfill goes in runs of the default size; each run's model call holds this many series.
YEAR_RUN_WINDOWS = DEFAULT_WINDOWS_PER_BACKFILL_RUN["1h"]
YEAR_RUN_SERIES = YEAR_RUN_WINDOWS * INSTRUMENTS * 3
# Stored GPU figure for the year's estimate where no GPU runs this benchmark: the hourly window
# (23 instruments, context 2048) in bfloat16 on one NVIDIA H200, one window per call
# (benchmarks/gpu_check_h200.json, measured 2026-11-27).
H200_HOURLY = {"seconds_per_window": 0.027323772999999107, "dtype": "bfloat16",
               "source": "NVIDIA H200, bfloat16, one window per call; benchmarks/gpu_check_h200.json, 2026-11-27"}
TARGETS = {
    "pipeline_over_model_1h": ("<=", 1.3),
    "pipeline_served_over_model_1h": ("<=", 1.3),
    "backfill_overhead_per_window_s_1d": ("<=", 0.02),
    "backfill_overhead_per_window_s_1h": ("<=", 0.02),
    "backfill_overhead_per_window_s_1d_model_in_run": ("<=", 0.02),
    "backfill_overhead_per_window_s_1h_model_in_run": ("<=", 0.02),
    "naive_over_pipeline": (">", 1.0),
    "naive_over_pipeline_served": (">", 1.0),
    "backfill_over_model": ("<=", 1.1),
    "model_over_dtype_peak": (">=", 0.7),
    "model_over_dtype_peak_1h": (">=", 0.7),
    "compiled_model_over_dtype_peak": (">=", 0.7),
    "compiled_model_over_dtype_peak_1h": (">=", 0.7),
    "year_of_hourly_on_one_gpu_s": ("<", 300),
}


@dataclass(frozen=True)
class Plan:
    """What one invocation measures: the mode's checkpoint, contexts, repetitions and run sizes."""

    mode: str  # full, quick or smoke
    device: str
    reps: int
    checkpoint: Path
    works: dict[str, Workload]
    backfill: Workload
    backfill_range: tuple[str, str]
    backfill_windows: int
    overhead_windows: dict[str, int]
    matmul_s: float
    # Cadences with an in-run pipeline and a fresh-process model; cadences through the forecast service.
    in_run: tuple[str, ...] = ("1d", "1h")
    served: tuple[str, ...] = ("1d", "1h")
    # Overhead runs: (cadence, through the forecast service).
    overhead_runs: tuple[tuple[str, bool], ...] = (("1d", False), ("1h", False), ("1d", True), ("1h", True))
    year_passes: int = 2
    # Cadences whose model is also timed compiled (CHRONOS2_COMPILE), on the CPU.
    compiled: tuple[str, ...] = ("1d", "1h")
    # Where the overhead runs write their cProfile statistics (``--profile``); None: not profiled.
    profile_dir: Path | None = None
    # The naive script and the model in a fresh process (each also runs alone in its own --smoke).
    peers: bool = True
    dtypes: tuple[str, ...] = field(default=DTYPES)

    def overhead_range(self, cadence: str) -> tuple[str, str]:
        fmt, step = _KEY_FORMAT[cadence]
        first = _OVERHEAD_FIRST[cadence]
        return first.strftime(fmt), (first + (self.overhead_windows[cadence] - 1) * step).strftime(fmt)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        works = {c: Workload(c, WINDOWS[c], SMOKE_CONTEXT, CADENCES[c].horizon) for c in ("1d", "1h")}
        return Plan(
            "smoke", args.device, 1, checkpoint("tiny"), works, Workload("1d", "2026-01-05", SMOKE_CONTEXT, 10),
            ("2026-01-05", "2026-01-07"), 3, {"1d": 3, "1h": 3}, 0.05,
            in_run=("1d",), served=("1d",), overhead_runs=(("1d", False), ("1h", True)), year_passes=1, peers=False,
            compiled=("1d",),
        )
    quick = args.quick
    works = {
        c: Workload(c, WINDOWS[c], QUICK_CONTEXT[c] if quick else CADENCES[c].context_length, CADENCES[c].horizon)
        for c in ("1d", "1h")
    }
    return Plan(
        "quick" if quick else "full", args.device, args.reps or (1 if quick else 3), CHECKPOINT, works,
        Workload("1d", BACKFILL_RANGE[0], works["1d"].context_length, works["1d"].horizon), BACKFILL_RANGE,
        BACKFILL_WINDOWS, dict(DEFAULT_WINDOWS_PER_BACKFILL_RUN), 1.0 if quick else 2.0,
        in_run=("1d",) if quick else ("1d", "1h"),
    )


def dtype_in_use(device: str) -> str:
    """The precision ``CHRONOS2_DTYPE`` (default ``auto``) gives on ``device`` here."""
    from forecasting_pipeline.forecasting.device import TorchCuda
    from forecasting_pipeline.forecasting.precision import resolve_dtype
    from forecasting_pipeline.settings import Settings

    setting = Settings.from_env().chronos2_dtype
    return resolve_dtype(setting, device, TorchCuda() if device == "cuda" else None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine


def machine(device: str) -> dict:
    import torch

    from forecasting_pipeline.forecasting.precision import cpu_has_native_bf16

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    info = {
        "cpu": cpu,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "dtype_in_use": dtype_in_use(device),
        "load_average_at_start": list(os.getloadavg()),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_gflops(device: str, dtype_name: str, seconds: float) -> float:
    """Best torch.mm throughput on square matrices, in GFLOP/s (2 n^3 per product)."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best, spent = 0.0, 0.0
    while spent < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        dt = time.perf_counter() - t
        spent += dt
        best = max(best, 2 * n**3 / dt / 1e9)
    return best


def machine_limit(plan: Plan, before: dict | None = None) -> dict:
    """The matmul peak of each dtype: the best of this sample and ``before`` (a busy moment lowers one)."""
    out = {f"{d}_gflops": matmul_gflops(plan.device, d, plan.matmul_s) for d in plan.dtypes}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in out.items()}


# ---------------------------------------------------------------- bare model


def timed_predict(pipeline, inputs, work: Workload, device: str, reps: int, batch_size: int | None = None,
                  warm_up: bool = True, attention: str | None = None) -> tuple[float, list[float], object]:
    """Median seconds of ``reps`` warm calls (after one warm-up call), all times, and the last output.

    The calls run as a run's do on ``device``: its series per pass and its attention kernel, unless
    ``batch_size`` or ``attention`` say otherwise.
    """
    import torch

    from forecasting_pipeline.forecasting.model import use_attention
    from forecasting_pipeline.forecasting.runner import Chronos2Runner, attention_for

    batch_size = batch_size or Chronos2Runner().batch_size_for(device)
    use_attention(pipeline, attention or attention_for(device))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kwargs = dict(prediction_length=work.horizon, quantile_levels=[0.1, 0.5, 0.9], context_length=work.context_length,
                  batch_size=batch_size)
    if warm_up:
        pipeline.predict_quantiles(inputs, **kwargs)  # oneDNN/cuBLAS set-up for these shapes
    times, out = [], None
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out, _ = pipeline.predict_quantiles(inputs, **kwargs)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def bare_model(plan: Plan) -> dict:
    """Each cadence's window in each dtype: seconds, GFLOP/s, and bf16's forecasts against fp32's."""
    from forecasting_pipeline.forecasting.model import load_chronos2

    results: dict = {"dtype_in_use": dtype_in_use(plan.device)}
    inputs = {c: window_inputs(work)[1] for c, work in plan.works.items()}
    outputs: dict = {}
    for dtype in plan.dtypes:
        loaded = load_chronos2(str(plan.checkpoint), revision="benchmark", device=plan.device, dtype=dtype)
        params = sum(p.numel() for p in loaded.pipeline.model.parameters())
        results["parameters"] = params
        results[dtype] = {}
        for cadence, work in plan.works.items():
            median, times, out = timed_predict(loaded.pipeline, inputs[cadence], work, plan.device, plan.reps)
            n_tokens = tokens(inputs[cadence], work.context_length, work.horizon)
            results[dtype][cadence] = {
                "series": len(inputs[cadence]), "context_length": work.context_length, "horizon": work.horizon,
                "seconds": median, "all_seconds": times, "tokens": n_tokens,
                "gflops": 2 * params * n_tokens / median / 1e9,
            }
            outputs[dtype, cadence] = out
            log(f"bare model {cadence} {dtype}: {median:.2f}s for {len(inputs[cadence])} series at context "
                f"{work.context_length}")
        if plan.device == "cpu" and dtype == results["dtype_in_use"]:
            results["cpu_passes"] = {c: cpu_passes(loaded.pipeline, inputs[c], w, plan.reps) for c, w in plan.works.items()}
            results["compiled"] = {c: compiled_model(loaded.pipeline, inputs[c], plan.works[c], plan.reps,
                                                     cold=plan.mode != "smoke") for c in plan.compiled}
        del loaded
    if set(DTYPES) <= set(plan.dtypes):
        results["bf16_change"] = {c: bf16_change(outputs["float32", c], outputs["bfloat16", c], inputs[c])
                                  for c in plan.works}
    return results


def cpu_passes(pipeline, inputs: list[dict], work: Workload, reps: int) -> dict:
    """A CPU run's passes (``CPU_BATCH_SIZE`` series) against the whole window in one SDPA pass, and the two kernels.

    The passes run once with each attention kernel; ``cpu_passes`` is the one this CPU's runs take
    (``attention_for``). All three are timed in alternation, ``reps`` rounds after a warm-up of
    each, so that the machine's drift over minutes falls on them alike; a ratio is the median of
    the rounds'.
    """
    import numpy as np

    from forecasting_pipeline.forecasting.runner import attention_for, series_count

    whole = 1 + series_count(inputs)
    runs = {"one_sdpa_pass": dict(batch_size=whole, attention="sdpa"),
            "passes_eager": dict(attention="eager"), "passes_sdpa": dict(attention="sdpa")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for name, how in runs.items():
        timed_predict(pipeline, inputs, work, "cpu", 1, warm_up=False, **how)  # warm-up, not counted
    for _ in range(max(1, reps)):
        for name, how in runs.items():
            seconds, _all, outputs[name] = timed_predict(pipeline, inputs, work, "cpu", 1, warm_up=False, **how)
            times[name].append(seconds)
    kernel = attention_for("cpu")
    times["cpu_passes"] = times[f"passes_{kernel}"]
    a, b = (np.stack([q[0].float().numpy() for q in outputs[n]]) for n in ("one_sdpa_pass", f"passes_{kernel}"))
    spread = np.array([np.std(np.asarray(x["target"], dtype=np.float64)) for x in inputs])[:, None, None]
    return {**{f"{n}_s": statistics.median(t) for n, t in times.items()}, "all_seconds": times, "kernel": kernel,
            "speedup": statistics.median(o / c for o, c in zip(times["one_sdpa_pass"], times["cpu_passes"])),
            "sdpa_over_eager_speedup": statistics.median(e / f for e, f in zip(times["passes_eager"],
                                                                                times["passes_sdpa"])),
            "max_change_of_std": float((np.abs(a - b) / spread).max())}


@contextmanager
def compile_cache(cold: bool):
    """With ``cold``, an empty compile cache for the block: a compiled model's first call is then a
    cold compilation, the most a backfill run's first call costs. Without, the machine's cache."""
    if not cold:
        yield
        return
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="inductor_") as folder, temporary_cache_dir(folder):
        yield


def full_passes(inputs: list[dict], batch: int) -> list[dict]:
    """``inputs`` and the first of them again, up to whole passes of ``batch`` series (three per input)."""
    per_input = 1 + len(inputs[0].get("past_covariates", {}))
    count = -(-len(inputs) * per_input // batch) * batch // per_input
    return (inputs * (count // len(inputs) + 1))[:count]


def compiled_model(pipeline, inputs: list[dict], work: Workload, reps: int, cold: bool = True) -> dict:
    """The model compiled (``CHRONOS2_COMPILE``) against eager, on the CPU, in whole passes as a backfill run's.

    The window's inputs are topped up to whole passes (a run of many windows has a short pass only
    at its end). The first compiled call, which compiles (from an empty cache with ``cold``), is timed
    on its own; then eager and compiled calls alternate ``reps`` rounds, and the ratio is the median of the rounds'.
    """
    import numpy as np

    from forecasting_pipeline.forecasting.compilation import compiled_passes
    from forecasting_pipeline.forecasting.runner import Chronos2Runner, series_count

    batch = Chronos2Runner().batch_size_for("cpu")
    full = full_passes(inputs, batch)
    timed_predict(pipeline, full, work, "cpu", 1)  # the eager warm-up, not counted
    with compile_cache(cold), compiled_passes(pipeline, batch) as encoder:
        first_s, _all, _out = timed_predict(pipeline, full, work, "cpu", 1, warm_up=False)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    outputs = {}
    for _ in range(max(1, reps)):
        times["eager"].append(timed_predict(pipeline, full, work, "cpu", 1, warm_up=False)[0])
        with compiled_passes(pipeline, batch):
            seconds, _all, outputs["compiled"] = timed_predict(pipeline, full, work, "cpu", 1, warm_up=False)
        times["compiled"].append(seconds)
    seconds, _all, outputs["eager"] = timed_predict(pipeline, full, work, "cpu", 1, warm_up=False)
    a, b = (np.stack([q[0].float().numpy() for q in outputs[n]]) for n in ("eager", "compiled"))
    spread = np.array([np.std(np.asarray(x["target"], dtype=np.float64)) for x in full])[:, None, None]
    params = sum(p.numel() for p in pipeline.model.parameters())
    compiled_s = statistics.median(times["compiled"])
    passes = series_count(full) // batch
    log(f"compiled model {work.cadence}: {compiled_s:.2f}s against eager {statistics.median(times['eager']):.2f}s "
        f"for {len(full)} inputs; first call {first_s:.1f}s" + (f"; FAILED: {encoder.failure}" if encoder.failure else ""))
    return {"inputs": len(full), "passes": passes, "first_call_s": first_s, "failure": encoder.failure,
            "compiled_passes": encoder.compiled_passes, "all_seconds": times,
            "eager_s": statistics.median(times["eager"]), "compiled_s": compiled_s,
            "speedup": statistics.median(e / c for e, c in zip(times["eager"], times["compiled"])),
            "gflops": 2 * params * tokens(full, work.context_length, work.horizon) / compiled_s / 1e9,
            "max_change_of_std": float((np.abs(a - b) / spread).max())}


def bf16_change(fp32, bf16, inputs: list[dict]) -> dict:
    """How far bf16 moves each quantile from fp32, in units of each series' context std (scale-free)."""
    import numpy as np

    a = np.stack([q[0].float().cpu().numpy() for q in fp32])
    b = np.stack([q[0].float().cpu().numpy() for q in bf16])
    spread = np.array([np.std(x["target"]) for x in inputs])
    moved = np.abs(b - a).max(axis=(1, 2)) / spread
    p50 = np.abs(b[..., 1] - a[..., 1]).max(axis=1) / spread
    return {"max_of_std": float(moved.max()), "median_of_std": float(np.median(moved)),
            "p50_max_of_std": float(p50.max())}


def in_use(r: dict) -> dict:
    """The bare model's figures in the dtype the pipeline runs in."""
    return r["bare"][r["bare"]["dtype_in_use"]]


def bare_model_again(plan: Plan) -> float:
    """The daily bare model once more, after the backfill: a shared machine drifts over minutes."""
    from forecasting_pipeline.forecasting.model import load_chronos2

    loaded = load_chronos2(str(plan.checkpoint), revision="benchmark", device=plan.device, dtype=dtype_in_use(plan.device))
    _, inputs = window_inputs(plan.works["1d"])
    median, _times, _out = timed_predict(loaded.pipeline, inputs, plan.works["1d"], plan.device, plan.reps)
    return median


def series_per_second(plan: Plan, context_length: int, horizon: int) -> dict:
    """The model's series per second at the batch size a backfill run uses on this device (hourly windows).

    A backfill run's call holds every window's series and runs them in passes of
    ``Chronos2Runner.batch_size_for(device)`` series; this times ``plan.year_passes`` such passes of
    hourly windows (the first window repeated), after one warm-up pass. A series is one variate
    (a target or a covariate): each instrument's input holds three.
    """
    from forecasting_pipeline.forecasting.compilation import compiled_passes, should_compile
    from forecasting_pipeline.forecasting.model import load_chronos2
    from forecasting_pipeline.forecasting.runner import Chronos2Runner

    dtype = dtype_in_use(plan.device)
    batch = Chronos2Runner().batch_size_for(plan.device)
    work = Workload("1h", WINDOWS["1h"], context_length, horizon)
    window = window_inputs(work)[1]
    per_input = 1 + len(window[0]["past_covariates"])
    count = max(1, batch * plan.year_passes // per_input)  # instrument inputs filling the passes
    inputs = (window * (count // len(window) + 1))[:count]
    loaded = load_chronos2(str(plan.checkpoint), revision="benchmark", device=plan.device, dtype=dtype)
    timed_predict(loaded.pipeline, inputs[: max(1, batch // per_input)], work, plan.device, 1, batch,
                  warm_up=False)  # warm-up: one pass
    seconds, _times, _out = timed_predict(loaded.pipeline, inputs, work, plan.device, 1, batch, warm_up=False)
    params = sum(p.numel() for p in loaded.pipeline.model.parameters())
    n_tokens = tokens(inputs, context_length, horizon)
    out = {"dtype": dtype, "batch_size": batch, "series": len(inputs) * per_input, "seconds": seconds,
           "series_per_s": len(inputs) * per_input / seconds, "context_length": context_length, "horizon": horizon,
           "gflops": 2 * params * n_tokens / seconds / 1e9}
    if plan.mode != "smoke" and should_compile("auto", plan.device, YEAR_RUN_SERIES, batch):
        # A year's backfill runs are long enough for ``auto`` to compile: their passes, compiled.
        # (Smoke runs leave it out: their model stage already compiles, and a compilation is most
        # of a smoke run's time.)
        with compiled_passes(loaded.pipeline, batch) as encoder:
            with compile_cache(cold=True):
                first_s, _times, _out = timed_predict(loaded.pipeline, inputs, work, plan.device, 1, batch,
                                                      warm_up=False)
            seconds, _times, _out = timed_predict(loaded.pipeline, inputs, work, plan.device, 1, batch, warm_up=False)
        if encoder.failure is None:
            out["compiled"] = {"seconds": seconds, "series_per_s": len(inputs) * per_input / seconds,
                               "first_call_s": first_s, "gflops": 2 * params * n_tokens / seconds / 1e9}
    return out


# ---------------------------------------------------------------- database and Dagster instance


def child_env(database_url: str, dagster_home: Path, plan: Plan) -> dict[str, str]:
    from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url

    device = plan.device
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DAGSTER_PG_URL": dagster_storage_url(database_url),
        "DAGSTER_HOME": str(dagster_home),
        "CHRONOS2_MODEL": str(plan.checkpoint),
        "CHRONOS2_DEVICE": device,
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore",
        # As the Makefile sets it for every process it starts: per-window events written in batches.
        "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "1000"),
    }
    env.pop("MARKET_DATA_SOURCE", None)  # the sample source, as in the bare model
    return env


def run_child(argv: list[str], env: dict[str, str], log_file: Path) -> dict:
    """Run one process through the launcher: wall time from start to exit, its own peak RSS, exit code."""
    LAUNCHER.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": str(REPO), "log": str(log_file)}) + "\n")
    LAUNCHER.stdin.flush()
    return json.loads(LAUNCHER.stdout.readline())


def failed(what: str, log_file: Path) -> RuntimeError:
    """The error for a child that failed, with its log's tail: the log's folder is deleted on the way out."""
    try:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
    except OSError:
        tail = "(no log)"
    return RuntimeError(f"{what} failed; the end of {log_file.name}:\n{tail}")


def run_config(work: Workload) -> dict:
    """Run config that sets the context only where it differs from the cadence default."""
    cadence = CADENCES[work.cadence]
    if work.context_length == cadence.context_length:
        return {}
    c = work.cadence
    return {"ops": {
        f"ohlcv_{c}": {"config": {"history_bars": work.context_length}},
        f"chronos2_forecasts_{c}": {"config": {"context_length": work.context_length}},
    }}


def run_timeline(instance, started_at: float, cadence: str) -> dict:
    """Split the latest run into phases from its event log and the forecasts asset's metadata."""
    import dagster as dg

    run = instance.get_runs(limit=1)[0]
    if run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"run {run.run_id} ended {run.status}")
    steps: dict[str, dict[str, float]] = {}
    metadata: dict[str, float] = {}
    run_end = committed_at = None
    records = instance.all_logs(run.run_id)
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if kind in ("STEP_START", "STEP_SUCCESS"):
            steps.setdefault(event.step_key, {})[kind] = record.timestamp
        elif kind == "ASSET_MATERIALIZATION" and event.step_key == f"chronos2_forecasts_{cadence}":
            values = record.asset_materialization.metadata
            for key in ("model_load_seconds", "predict_seconds", "model_cpu_seconds", "series", "device"):
                if key in values:
                    metadata[key] = values[key].value
        elif kind == "ASSET_MATERIALIZATION" and event.step_key == f"ml_predictions_{cadence}":
            # One per window, logged right after its transaction commits: the last is "rows committed".
            metadata["rows"] = metadata.get("rows", 0) + record.asset_materialization.metadata["rows"].value
            committed_at = max(committed_at or 0.0, record.timestamp)
        elif event.event_type == dg.DagsterEventType.RUN_SUCCESS:
            run_end = record.timestamp

    def span(step: str) -> float:
        return steps[step]["STEP_SUCCESS"] - steps[step]["STEP_START"]

    c = cadence
    first_start = min(s["STEP_START"] for s in steps.values())
    return {
        "run_id": run.run_id,
        "startup_s": first_start - started_at,
        "data_s": span(f"ohlcv_{c}"),
        "features_s": span(f"covariates_{c}"),
        "model_s": span(f"chronos2_forecasts_{c}"),
        "model_load_s": metadata.get("model_load_seconds"),
        "predict_s": metadata.get("predict_seconds"),
        "model_cpu_s": metadata.get("model_cpu_seconds"),
        "write_s": span(f"ml_predictions_{c}"),
        "committed_s": (committed_at or steps[f"ml_predictions_{c}"]["STEP_SUCCESS"]) - started_at,
        "run_end_s": (run_end - started_at) if run_end else None,
        "device": metadata.get("device"),
        "series": metadata.get("series"),
        # Rows written (upserted) by ml_predictions: one per instrument and window.
        "rows": metadata.get("rows"),
        "events": len(records),
    }


def pipeline_run(work: Workload, env: dict, home: Path, instance, label: str = "pipeline") -> dict:
    argv = [command("dagster"), "asset", "materialize", "-m", "forecasting_pipeline.definitions",
            "--select", f"group:chronos2_{work.cadence}", "--partition", work.window]
    if run_config(work):
        argv += ["--config-json", json.dumps(run_config(work))]
    log_file = home / f"{label}_{work.cadence}.log"
    child = run_child(argv, env, log_file)
    if child["returncode"] != 0:
        raise failed(f"{label} {work.cadence}", log_file)
    return {**child, **run_timeline(instance, child["started_at"], work.cadence)}


def median_run(reps: int, run) -> dict:
    """The run with the median rows-committed time of ``reps`` (the bare model is a median too)."""
    runs = sorted((run() for _ in range(reps)), key=lambda r: r["committed_s"])
    return {**runs[len(runs) // 2], "all_committed_s": [r["committed_s"] for r in runs]}


def dagster_floor(env: dict, home: Path, instance) -> dict:
    """One no-op asset through the same CLI, executor and instance: process start to its step's end."""
    import dagster as dg

    argv = [command("dagster"), "asset", "materialize", "-f", str(HERE / "dagster_floor.py"), "--select", "noop"]
    child = run_child(argv, env, home / "dagster_floor.log")
    if child["returncode"] != 0:
        raise failed("the no-op Dagster run", home / "dagster_floor.log")
    run = instance.get_runs(limit=1)[0]
    done = max(
        r.timestamp for r in instance.all_logs(run.run_id)
        if r.dagster_event and r.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    )
    return {**child, "step_done_s": done - child["started_at"]}


@contextmanager
def model_server(env: dict, home: Path, works: dict[str, Workload], checkpoint: Path, profile: Path | None = None):
    """A ``forecasting-pipeline serve`` (the forecast service runs use) on the checkpoint, warmed by one batch per cadence.

    The warm-up batch is the one the bare model's untimed first call is: a server that has served
    the previous hourly or daily run has seen these shapes.
    """
    from forecasting_pipeline.forecasting.batch_wire import model_key
    from forecasting_pipeline.forecasting.service_client import ServiceUnavailable, readiness, service_forecast

    socket_path = str(home / "chronos2.sock")
    argv = [command("forecasting-pipeline"), "serve", "--port", str(_free_port()), "--socket", socket_path]
    if profile is not None:  # written when the service exits (terminate below)
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), *argv]
    with (home / "model_server.log").open("w") as log_file:
        server = subprocess.Popen(
            argv,
            env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
        )
    info: dict = {}
    try:
        started = time.perf_counter()
        while True:
            try:
                readiness(socket_path, 5)
                break
            except ServiceUnavailable:
                if time.perf_counter() - started > 300 or server.poll() is not None:
                    raise
                time.sleep(0.1)
        info["start_s"] = time.perf_counter() - started
        for work in works.values():
            _, inputs = window_inputs(work)
            service_forecast(socket_path, model_key(str(checkpoint), None, env.get("CHRONOS2_DTYPE") or "auto"), inputs,
                             work.horizon, work.context_length)
        yield socket_path, info
    finally:
        info["peak_rss_mb"] = _peak_rss_mb(server.pid)
        server.terminate()
        server.wait(timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float | None:
    """A running process's own peak RSS (VmHWM), which exec reset: unlike ru_maxrss, not its parent's."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def backfill_run(env: dict, home: Path, instance, plan: Plan) -> dict:
    first, last = plan.backfill_range
    config = home / "config_backfill.yaml"
    config.write_text(json.dumps(run_config(plan.backfill) or {}))
    # One run over the range, as the multi_run(30) backfill policy launches it (`dagster asset
    # materialize --partition-range` only accepts single_run policies, so the job's range tags are used).
    argv = [command("dagster"), "job", "execute", "-m", "forecasting_pipeline.definitions",
            "-j", "chronos2_1d_job", "-c", str(config), "--tags",
            json.dumps({"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})]
    child = run_child(argv, env, home / "backfill.log")
    if child["returncode"] != 0:
        raise failed("the backfill", home / "backfill.log")
    return {**child, **run_timeline(instance, child["started_at"], "1d"), "windows": plan.backfill_windows}


# ---------------------------------------------------------------- cost beyond the model


def overhead_run(env: dict, home: Path, instance, plan: Plan, cadence: str, served: bool) -> dict:
    """One backfill run over ``plan.overhead_range(cadence)`` on the tiny checkpoint: what a run costs beyond its model.

    The tiny model keeps the run short; what it measures is everything else a backfill run does
    per window (reading, validating, shaping, writing, Dagster's events), at the cadence's context.
    Model seconds are the forecast step's load and predict seconds; load includes importing torch
    and chronos, which only the model needs. Through the forecast service, a run imports neither.
    """
    context_length = plan.works[cadence].context_length
    first, last = plan.overhead_range(cadence)
    config = home / f"config_overhead_{cadence}.yaml"
    config.write_text(json.dumps({"ops": {
        f"ohlcv_{cadence}": {"config": {"history_bars": context_length}},
        f"chronos2_forecasts_{cadence}": {"config": {"context_length": context_length}},
    }}))
    argv = [command("dagster"), "job", "execute", "-m", "forecasting_pipeline.definitions",
            "-j", f"chronos2_{cadence}_job", "-c", str(config), "--tags",
            json.dumps({"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})]
    label = f"overhead_{cadence}{'_served' if served else ''}"
    load_average = os.getloadavg()[0]
    if plan.profile_dir is not None:
        plan.profile_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cProfile", "-o", str(plan.profile_dir / f"{label}.prof"), *argv]
    # Uncompiled: compiling the tiny model would only add model time, and its compiler's processes'
    # CPU would land beyond the model in the run's CPU seconds.
    child = run_child(argv, {**env, "CHRONOS2_MODEL": str(TINY_CHECKPOINT), "CHRONOS2_COMPILE": "off"},
                      home / f"{label}.log")
    if child["returncode"] != 0:
        raise failed(f"the {label} backfill run", home / f"{label}.log")
    timeline = run_timeline(instance, child["started_at"], cadence)
    windows = plan.overhead_windows[cadence]
    model_s = (timeline["model_load_s"] or 0.0) + timeline["predict_s"]
    # Through the server the model's CPU is the server's, not this process's.
    model_cpu_s = 0.0 if served else timeline["model_cpu_s"]
    return {**child, **timeline, "windows": windows, "model_s": model_s, "load_average": load_average,
            "overhead_per_window_s": (child["wall_s"] - model_s) / windows,
            "overhead_cpu_per_window_s": (child["cpu_s"] - model_cpu_s) / windows,
            "per_window_ms": phases_per_window_ms(child["wall_s"], timeline, model_s, windows)}


def phases_per_window_ms(wall_s: float, t: dict, model_s: float, windows: int) -> dict:
    """Where a backfill run's time beyond the model goes, in ms per window, by phase of the run.

    start-up: process start to the first step (imports, definitions, instance, the run's planned
    events); data, features, write: those steps; model step: the forecasts step less the model's
    load and predict seconds (inputs, shaping, checks, frames); the rest: between steps and after
    the rows are committed (run-end events, exit). They add up to the overhead.
    """
    phases = {
        "start-up": t["startup_s"], "data": t["data_s"], "features": t["features_s"],
        "model step around the call": t["model_s"] - model_s, "write": t["write_s"],
    }
    phases["between steps and exit"] = wall_s - model_s - sum(phases.values())
    return {name: 1000 * seconds / windows for name, seconds in phases.items()}


def overhead_stage(env: dict, home: Path, instance, plan: Plan) -> dict:
    """Per-window cost beyond the model of a backfill run, each cadence, model in the run and through a server."""
    checkpoint("tiny")
    out: dict = {}
    for cadence, served in plan.overhead_runs:
        if not served:
            out[cadence] = overhead_run(env, home, instance, plan, cadence, served=False)
            log(f"backfill overhead {cadence}: {out[cadence]['overhead_per_window_s']:.4f}s per window")
    served_cadences = [c for c, served in plan.overhead_runs if served]
    if served_cadences:
        profile = plan.profile_dir / "service.prof" if plan.profile_dir is not None else None
        with model_server({**env, "CHRONOS2_MODEL": str(TINY_CHECKPOINT)}, home,
                          {c: plan.works[c] for c in served_cadences}, TINY_CHECKPOINT, profile) as (socket_path, _):
            for cadence in served_cadences:
                done = overhead_run({**env, "CHRONOS2_SERVER": socket_path}, home, instance, plan, cadence, served=True)
                out[f"{cadence}_served"] = done
                log(f"backfill overhead {cadence} through the forecast service: {done['overhead_per_window_s']:.4f}s per window")
    return out


# ---------------------------------------------------------------- a year of hourly windows


def year_estimates(r: dict) -> dict:
    """A year of hourly windows for 23 instruments: 8,760 x (model time per window + cost beyond it per window).

    Model time per window is the measured series per second at a backfill run's batch size on this
    device (``series_per_second``), for the 69 series (23 targets, 2 covariates each) of a window.
    On a machine without a GPU, the GPU estimate takes the model time from ``H200_HOURLY``, a stored
    figure, and says so. The cost beyond the model is this run's hourly overhead (model in the run).
    """
    overhead = r["overhead"].get("1h") or r["overhead"]["1h_served"]
    beyond = overhead["overhead_per_window_s"]
    rate = r["year_model"]
    compiled = rate.get("compiled")
    runs = math.ceil(HOURS_PER_YEAR / YEAR_RUN_WINDOWS)
    # A compiled run's first call compiles: once per run (a process), beside its windows.
    here_model = 3 * INSTRUMENTS / (compiled or rate)["series_per_s"]
    compiling = runs * compiled["first_call_s"] if compiled else 0.0
    out = {"here": {
        "device": r["machine"]["device"], "dtype": rate["dtype"], "batch_size": rate["batch_size"],
        "compiled": bool(compiled), "compile_s_per_year": compiling,
        "model_s_per_window": here_model, "beyond_model_s_per_window": beyond,
        "seconds": HOURS_PER_YEAR * (here_model + beyond) + compiling,
    }}
    if compiled:
        eager_model = 3 * INSTRUMENTS / rate["series_per_s"]
        out["here_eager"] = {"model_s_per_window": eager_model, "seconds": HOURS_PER_YEAR * (eager_model + beyond)}
    if r["machine"]["device"] == "cuda":
        out["gpu"] = {**out["here"], "source": "this run"}
    else:
        gpu_model = H200_HOURLY["seconds_per_window"]
        out["gpu"] = {"model_s_per_window": gpu_model, "dtype": H200_HOURLY["dtype"], "source": H200_HOURLY["source"],
                      "beyond_model_s_per_window": beyond, "seconds": HOURS_PER_YEAR * (gpu_model + beyond)}
    return out


def year_stage(results: dict, plan: Plan) -> None:
    """The model's hourly series per second here, and an hourly backfill run's cost beyond the model."""
    hourly = plan.works["1h"]
    results["year_model"] = series_per_second(plan, hourly.context_length, hourly.horizon)
    log(f"model, hourly windows at batch size {results['year_model']['batch_size']}: "
        f"{results['year_model']['series_per_s']:.1f} series/s")
    year_plan = replace(plan, overhead_runs=(("1h", False),))
    with project_instance(year_plan) as (env, home, instance):
        results["overhead"] = overhead_stage(env, home, instance, year_plan)


def year_report(r: dict) -> str:
    y = r["year"]
    here, gpu = y["here"], y["gpu"]
    compiled = (f" + {here['compile_s_per_year']:.0f} s compiling (once per run of {YEAR_RUN_WINDOWS} windows); "
                f"uncompiled {y['here_eager']['seconds'] / 60:.1f} min" if here["compiled"] else "")
    return "\n".join([
        f"A year of hourly windows ({HOURS_PER_YEAR} windows x {INSTRUMENTS} instruments):",
        f"  here ({here['device']}, {here['dtype']}, batch {here['batch_size']}"
        f"{', compiled' if here['compiled'] else ''}): {here['seconds'] / 60:.1f} min = "
        f"{HOURS_PER_YEAR} x ({here['model_s_per_window']:.4f} s model + {here['beyond_model_s_per_window']:.4f} s "
        f"beyond it){compiled}",
        f"  one GPU: {gpu['seconds'] / 60:.1f} min = {HOURS_PER_YEAR} x ({gpu['model_s_per_window']:.4f} s model "
        f"[{gpu['source']}] + {gpu['beyond_model_s_per_window']:.4f} s beyond it [this run])",
    ])


def script_run(script: str, work: Workload, env: dict, home: Path, plan: Plan) -> dict:
    """Run one of the plain benchmark scripts (bare_process.py, naive.py) and read its JSON line."""
    argv = [sys.executable, str(HERE / script), "--checkpoint", str(plan.checkpoint), "--cadence", work.cadence,
            "--window", work.window, "--context", str(work.context_length), "--horizon", str(work.horizon),
            "--device", plan.device, "--dtype", dtype_in_use(plan.device)]
    log_file = home / f"{Path(script).stem}_{work.cadence}.log"
    pythonpath = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    child = run_child(argv, {**env, "PYTHONPATH": pythonpath}, log_file)
    if child["returncode"] != 0:
        raise failed(script, log_file)
    return {**child, **json.loads(log_file.read_text().strip().splitlines()[-1])}


# ---------------------------------------------------------------- report


def ratios(r: dict) -> dict:
    # The pipeline is timed from process start to rows committed (the measure); what
    # follows the commit (the fan chart, Dagster's run-end events, interpreter exit) is left out.
    bare = in_use(r)
    bare_1d = bare["1d"]["seconds"]
    pipeline_1d = r["pipeline"]["1d"]["committed_s"]
    served_1d = r["pipeline_served"]["1d"]["committed_s"]
    floor = r["dagster_floor"]["step_done_s"]
    out = {
        "pipeline_over_model": pipeline_1d / bare_1d,
        "pipeline_served_over_model": served_1d / bare_1d,
        # No pipeline through Dagster's CLI can beat the model plus a no-op run.
        "floor_over_model": (bare_1d + floor) / bare_1d,
        "floor_over_model_1h": (bare["1h"]["seconds"] + floor) / bare["1h"]["seconds"],
        # Against the bare model timed before and after it, since the backfill takes minutes.
        "backfill_over_model": r["backfill"]["committed_s"] / (r["backfill"]["windows"] * (bare_1d + r["bare_1d_after"]) / 2),
        "bare_model_after_over_before": r["bare_1d_after"] / bare_1d,
    }
    if "naive" in r:
        out["pipeline_over_model_process"] = pipeline_1d / r["bare_process"]["1d"]["model_process_s"]
        out["naive_over_pipeline"] = r["naive"]["1d"]["wall_s"] / pipeline_1d
        out["naive_over_pipeline_served"] = r["naive"]["1d"]["wall_s"] / served_1d
    if "1h" in r["pipeline_served"]:
        out["pipeline_served_over_model_1h"] = r["pipeline_served"]["1h"]["committed_s"] / bare["1h"]["seconds"]
    # Quick and smoke modes leave out the hourly in-run pipeline and fresh-process model (see Plan).
    if "1h" in r["pipeline"] and "naive" in r:
        out["pipeline_over_model_1h"] = r["pipeline"]["1h"]["committed_s"] / bare["1h"]["seconds"]
        out["pipeline_over_model_process_1h"] = r["pipeline"]["1h"]["committed_s"] / r["bare_process"]["1h"]["model_process_s"]
    return out | model_keys(r)


def model_keys(r: dict) -> dict:
    """Model seconds per dtype and cadence, the model against its dtype's matmul peak, and bf16's change."""
    out: dict = {}
    limit, bare = r["machine_limit"], r["bare"]
    for dtype in DTYPES:
        for c in ("1d", "1h"):
            if dtype in bare:
                out[f"model_s_{c}_{dtype}"] = bare[dtype][c]["seconds"]
                out[f"model_over_{dtype}_peak" + ("_1h" if c == "1h" else "")] = \
                    bare[dtype][c]["gflops"] / limit[f"{dtype}_gflops"]
    used = bare["dtype_in_use"]
    out["model_over_dtype_peak"] = out[f"model_over_{used}_peak"]
    out["model_over_dtype_peak_1h"] = out[f"model_over_{used}_peak_1h"]
    for c, comp in bare.get("compiled", {}).items():
        if comp["failure"] is None:
            out["compiled_model_over_dtype_peak" + ("_1h" if c == "1h" else "")] = comp["gflops"] / limit[f"{used}_gflops"]
            out[f"compile_speedup_{c}"] = comp["speedup"]
            out[f"compile_first_call_s_{c}"] = comp["first_call_s"]
            out[f"compiled_max_change_of_std_{c}"] = comp["max_change_of_std"]
    for c, passes in bare.get("cpu_passes", {}).items():
        out[f"cpu_passes_speedup_{c}"] = passes["speedup"]
        out[f"cpu_passes_sdpa_over_eager_{c}"] = passes["sdpa_over_eager_speedup"]
        out[f"cpu_passes_max_change_of_std_{c}"] = passes["max_change_of_std"]
    for c, change in bare.get("bf16_change", {}).items():
        out[f"bf16_speedup_{c}"] = bare["float32"][c]["seconds"] / bare["bfloat16"][c]["seconds"]
        out[f"bf16_max_change_of_std_{c}"] = change["max_of_std"]
    return out


def overhead_keys(r: dict) -> dict:
    """The backfill-overhead figures: per window beyond the model, model in the run and through a server."""
    o = r["overhead"]
    keys = {f"backfill_overhead_per_window_s_{c}": o[f"{c}_served"]["overhead_per_window_s"]
            for c in ("1d", "1h") if f"{c}_served" in o}
    keys |= {f"backfill_overhead_per_window_s_{c}_model_in_run": o[c]["overhead_per_window_s"]
             for c in ("1d", "1h") if c in o}
    # The same beyond-the-model cost in the run process's CPU seconds: what a shared machine's load
    # does not inflate (through the server, the server's own share of a call is not in it).
    keys |= {f"backfill_overhead_cpu_per_window_s_{c}": o[f"{c}_served"]["overhead_cpu_per_window_s"]
             for c in ("1d", "1h") if f"{c}_served" in o}
    keys |= {f"backfill_overhead_cpu_per_window_s_{c}_model_in_run": o[c]["overhead_cpu_per_window_s"]
             for c in ("1d", "1h") if c in o}
    return keys


def year_keys(r: dict) -> dict:
    out = {"year_of_hourly_here_s": r["year"]["here"]["seconds"], "year_of_hourly_on_one_gpu_s": r["year"]["gpu"]["seconds"]}
    if "here_eager" in r["year"]:
        out["year_of_hourly_here_uncompiled_s"] = r["year"]["here_eager"]["seconds"]
    return out


@contextmanager
def project_instance(plan: Plan):
    """A database, a DAGSTER_HOME with the project's dagster.yaml on it, the child processes' env, and the instance."""
    CACHE.mkdir(exist_ok=True)
    with fresh_database() as database_url, tempfile.TemporaryDirectory(dir=CACHE, prefix="dagster_home_") as tmp:
        home = Path(tmp)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = child_env(database_url, home, plan)
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")})
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            yield env, home, instance


def overhead_report(r: dict) -> str:
    windows = ", ".join(f"{c} {r['overhead'][c]['windows']}" for c in r["overhead"] if not c.endswith("_served"))
    lines = [f"| backfill run (tiny model; windows: {windows}) | load average | wall s | model s (load + predict) "
             "| events | beyond the model, per window | its CPU seconds, per window |", "|---|---|---|---|---|---|---|"]
    for key, o in r["overhead"].items():
        lines.append(f"| {key.replace('_served', ' through the forecast service')} | {o['load_average']:.1f} | {o['wall_s']:.2f} "
                     f"| {o['model_s']:.2f} | {o['events']} | {o['overhead_per_window_s']:.4f} "
                     f"| {o['overhead_cpu_per_window_s']:.4f} |")
    phases = next(iter(r["overhead"].values()))["per_window_ms"]
    lines += ["", "| ms per window beyond the model | " + " | ".join(phases) + " |",
              "|---|" + "---|" * len(phases)]
    for key, o in r["overhead"].items():
        lines.append(f"| {key.replace('_served', ' through the forecast service')} | "
                     + " | ".join(f"{v:.1f}" for v in o["per_window_ms"].values()) + " |")
    return "\n".join(lines)


def verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = {"<=": value <= bound, "<": value < bound, ">": value > bound, ">=": value >= bound}[op]
    return f"target {op} {bound}: {'met' if ok else 'MISSED'}"


def f2(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def machine_lines(r: dict) -> list[str]:
    m = r["machine"]
    label = (f"{m['cpu']} (native bf16: {m['cpu_native_bf16']}), {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), dtype in use {m['dtype_in_use']}")
    if m["device"] == "cuda":
        label += f", GPU {m.get('gpu')}"
    lines = [f"machine: {label}; load average at start {m['load_average_at_start'][0]:.2f}",
             f"settings: {json.dumps(r['settings'])}", ""]
    # Only the load before the benchmark says anything: at the end it includes the benchmark's own threads.
    if m["load_average_at_start"][0] > 0.5 * m["cores"]:
        lines += [f"WARNING: other processes were busy (load average {m['load_average_at_start'][0]:.1f} at start, "
                  f"{m['load_average_at_end'][0]:.1f} at end, {m['cores']} cores): CPU figures are unreliable.", ""]
    return lines


def ratio_lines(r: dict) -> list[str]:
    lines = ["| figure | value | |", "|---|---|---|"]
    for key, value in r["ratios"].items():
        lines.append(f"| {key} | {value:.4g} | {verdict(key, value)} |")
    return lines


def model_lines(r: dict) -> list[str]:
    """The bare model per dtype and cadence, and the matmul peaks it is held against."""
    lines = ["| measurement | seconds | peak RSS (MB) |", "|---|---|---|"]
    for dtype in DTYPES:
        for c in ("1d", "1h"):
            b = r["bare"][dtype][c]
            lines.append(f"| bare model {c} {dtype} ({b['series']} series, context {b['context_length']}, "
                         f"{b['tokens']} tokens, {b['gflops']:.0f} GFLOP/s) | {b['seconds']:.2f} | |")
    for c, passes in r["bare"].get("cpu_passes", {}).items():
        lines.append(f"| bare model {c} {r['bare']['dtype_in_use']}, alternated: whole window in one SDPA pass "
                     f"{passes['one_sdpa_pass_s']:.2f} s / CPU passes, eager {passes['passes_eager_s']:.2f} s, SDPA "
                     f"{passes['passes_sdpa_s']:.2f} s (runs take {passes['kernel']}) | | |")
    for c, comp in r["bare"].get("compiled", {}).items():
        lines.append(f"| bare model {c} {r['bare']['dtype_in_use']}, {comp['inputs']} instruments in {comp['passes']} "
                     f"whole passes, alternated: eager {comp['eager_s']:.2f} s / compiled {comp['compiled_s']:.2f} s "
                     f"({comp['gflops']:.0f} GFLOP/s); first compiled call {comp['first_call_s']:.1f} s"
                     + (f"; compiling FAILED: {comp['failure']}" if comp["failure"] else "") + " | | |")
    ml = r["machine_limit"]
    lines.append(f"| matmul peak: fp32 {ml['float32_gflops']:.0f} GFLOP/s, bf16 {ml['bfloat16_gflops']:.0f} GFLOP/s | | |")
    return lines


def report(r: dict) -> str:
    lines = machine_lines(r) + ratio_lines(r) + [""] + model_lines(r)[:-1]
    lines.append(f"| bare model 1d again, after the backfill | {r['bare_1d_after']:.2f} | |")
    for kind, title in (("pipeline", ""), ("pipeline_served", " through the warm forecast service")):
        for c, p in r[kind].items():
            lines.append(f"| pipeline {c}{title}, process start to exit ({p['rows']} rows) | {p['wall_s']:.2f} "
                         f"| {p['peak_rss_mb']:.0f} |")
            lines.append(
                f"| &nbsp; start-up {p['startup_s']:.2f} / data {p['data_s']:.2f} / features {p['features_s']:.2f} / "
                f"model {p['model_s']:.2f} (load {f2(p['model_load_s'])}, predict {f2(p['predict_s'])}, on {p['device']}) / "
                f"write {p['write_s']:.2f} / rows committed at {p['committed_s']:.2f} | | |")
    ms = r["model_server"]
    lines.append(f"| forecast service: start to ready (imports + load, once) | {ms['start_s']:.2f} | {f2(ms['peak_rss_mb'])} |")
    fl = r["dagster_floor"]
    lines.append(f"| Dagster's floor: one no-op asset through the same CLI, process start to step done "
                 f"(exit {fl['wall_s']:.2f}) | {fl['step_done_s']:.2f} | {fl['peak_rss_mb']:.0f} |")
    for c, bp in r.get("bare_process", {}).items():
        lines.append(f"| bare model {c} in a fresh process: import {bp['imports_s']:.2f} + load {bp['load_s']:.2f} "
                     f"+ first call {bp['first_call_s']:.2f} | {bp['model_process_s']:.2f} | {bp['peak_rss_mb']:.0f} |")
    for c, n in r.get("naive", {}).items():
        lines.append(f"| naive peer {c}, process start to exit ({n['rows']} rows; predict {n['predict_s']:.2f}, "
                     f"{n['rows']} INSERTs {n['write_s']:.2f}) | {n['wall_s']:.2f} | {n['peak_rss_mb']:.0f} |")
    b = r["backfill"]
    lines.append(f"| backfill, {b['windows']} daily windows in one run ({b['rows']} rows; predict {f2(b['predict_s'])}) "
                 f"| {b['wall_s']:.2f} | {b['peak_rss_mb']:.0f} |")
    ml = r["machine_limit"]
    lines.append(f"| matmul peak: fp32 {ml['float32_gflops']:.0f} GFLOP/s, bf16 {ml['bfloat16_gflops']:.0f} GFLOP/s | | |")
    lines.append(f"| whole benchmark | {r['benchmark_seconds']:.0f} | |")
    return "\n".join(lines + ["", overhead_report(r), "", year_report(r)])


def model_stage(results: dict, plan: Plan) -> None:
    """The matmul peak of each dtype, the bare model in each, and the peak again (the best of two samples)."""
    results["machine_limit"] = machine_limit(plan)
    log(f"matmul peak: {results['machine_limit']}")
    results["bare"] = bare_model(plan)
    # Measured again after the model: a busy moment elsewhere on the machine lowers one sample.
    results["machine_limit"] = machine_limit(plan, results["machine_limit"])
    log(f"matmul peak (best of two samples): {results['machine_limit']}")


def pipeline_stages(results: dict, plan: Plan) -> None:
    """Every stage that runs the pipeline on one instance: single windows, the floor, the server, backfills."""
    works = plan.works
    with project_instance(plan) as (env, home, instance):
        results["pipeline"] = {}
        for c in plan.in_run:
            results["pipeline"][c] = median_run(plan.reps, lambda: pipeline_run(works[c], env, home, instance))
            log(f"pipeline {c}: {results['pipeline'][c]['wall_s']:.2f}s, {results['pipeline'][c]['rows']} rows")
        results["dagster_floor"] = dagster_floor(env, home, instance)
        log(f"Dagster floor: {results['dagster_floor']['step_done_s']:.2f}s")
        with model_server(env, home, {c: works[c] for c in plan.served}, plan.checkpoint) as (socket_path, server_info):
            served_env = {**env, "CHRONOS2_SERVER": socket_path}
            results["pipeline_served"] = {}
            for c in plan.served:
                results["pipeline_served"][c] = median_run(
                    plan.reps, lambda: pipeline_run(works[c], served_env, home, instance, "pipeline_served")
                )
                log(f"pipeline {c} through the forecast service: {results['pipeline_served'][c]['wall_s']:.2f}s")
        results["model_server"] = server_info
        if plan.peers:
            results["bare_process"] = {c: script_run("bare_process.py", works[c], env, home, plan) for c in plan.in_run}
            log(f"bare model in a fresh process 1d: {results['bare_process']['1d']['model_process_s']:.2f}s")
            results["naive"] = {"1d": script_run("naive.py", works["1d"], env, home, plan)}
            log(f"naive 1d: {results['naive']['1d']['wall_s']:.2f}s")
        results["backfill"] = backfill_run(env, home, instance, plan)
        log(f"backfill: {results['backfill']['wall_s']:.2f}s, {results['backfill']['rows']} rows")
        results["bare_1d_after"] = bare_model_again(plan)
        log(f"bare model 1d again: {results['bare_1d_after']:.2f}s")
        results["overhead"] = overhead_stage(env, home, instance, plan)
        keep = CACHE / "last_logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(home, keep, ignore=shutil.ignore_patterns("storage", "*.yaml"))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short contexts (1d 256, 1h 512) and 1 timed repetition")
    mode.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--reps", type=int, help="timed repetitions of the bare model and of each pipeline run (default: quick 1, else 3)")
    parser.add_argument("--windows", type=int, metavar="N",
                        help="windows per backfill-overhead run, both cadences (default: what the backfill policy gives)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run each backfill-overhead run under cProfile, writing DIR/overhead_<cadence>[_served].prof "
                             "(profiling slows the runs: its per-window figures are not the measure)")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--only", choices=["overhead", "model"],
                       help="overhead: only the backfill-overhead stage (minutes, tiny model); model: only the bare "
                            "model per dtype and cadence against the matmul peaks (stages 1 and 5)")
    stage.add_argument("--year", action="store_true",
                       help="only a year of hourly windows: the model's series/s at a backfill run's batch size, "
                            "an hourly backfill run's cost beyond the model, and the estimate")
    return parser.parse_args()


def finish(results: dict, args: argparse.Namespace, began: float, text) -> int:
    LAUNCHER.stdin.close()
    LAUNCHER.wait()
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["benchmark_seconds"] = time.perf_counter() - began
    print(text(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def main() -> int:
    args = arguments()
    began = time.perf_counter()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    plan = replace(make_plan(args), profile_dir=args.profile)
    if args.windows:
        plan = replace(plan, overhead_windows={c: args.windows for c in plan.overhead_windows})
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(args.device),
        "settings": {
            "mode": plan.mode, "device": plan.device, "reps": plan.reps, "checkpoint": plan.checkpoint.name,
            **{f"context_{c}": w.context_length for c, w in plan.works.items()},
            **{f"horizon_{c}": w.horizon for c, w in plan.works.items()},
            **{f"window_{c}": w.window for c, w in plan.works.items()},
            "backfill": f"{plan.backfill_range[0]}...{plan.backfill_range[1]} ({plan.backfill_windows} windows, one run)",
            "overhead_windows": plan.overhead_windows,
            "token_formula": "variates x (ceil(context/16) + 1 REG + ceil(horizon/16)); variates = 3 per instrument",
            "gflops_formula": "2 x parameters x tokens / seconds",
        },
    }
    log(f"machine: {results['machine']}")
    if args.only == "overhead":
        with project_instance(plan) as (env, home, instance):
            results["overhead"] = overhead_stage(env, home, instance, plan)
        results["ratios"] = overhead_keys(results)
        results.update(results["ratios"])
        return finish(results, args, began, lambda r: "\n".join(ratio_lines(r) + ["", overhead_report(r)]))
    if plan.mode != "smoke":
        checkpoint("full")
    if args.year:
        year_stage(results, plan)
        results["year"] = year_estimates(results)
        results["ratios"] = overhead_keys(results) | year_keys(results)
        results.update(results["ratios"])
        return finish(results, args, began, lambda r: "\n".join(
            ratio_lines(r) + ["", overhead_report(r), "", year_report(r)]))

    model_stage(results, plan)
    if args.only == "model":
        results["ratios"] = model_keys(results)
        results.update(results["ratios"])
        return finish(results, args, began, lambda r: "\n".join(machine_lines(r) + ratio_lines(r) + [""] + model_lines(r)))
    pipeline_stages(results, plan)
    hourly = plan.works["1h"]
    results["year_model"] = series_per_second(plan, hourly.context_length, hourly.horizon)
    results["year"] = year_estimates(results)
    results["ratios"] = ratios(results) | overhead_keys(results) | year_keys(results)
    results.update(results["ratios"])
    return finish(results, args, began, report)


if __name__ == "__main__":
    sys.exit(main())
