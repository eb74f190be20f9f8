"""Performance benchmark: the pipeline against the model's own cost, and the model against the machine.

Measures in one run, on one machine, with one full-size random-weight Chronos-2 checkpoint
(the published geometry, so the real compute cost):

1. bare model: one batched ``predict_quantiles`` for the 23 instruments (target + 2 covariates);
2. pipeline: one daily and one hourly window through Dagster's CLI against real PostgreSQL,
   process start to rows committed (the median of --reps runs), split into start-up, data, features,
   model and write; once with the model loaded in the run (as ``make run``), once through a warm
   model server (the socket of ``forecasting-pipeline serve``), and Dagster's own floor (one no-op asset,
   same CLI);
3. naive peer: ``benchmarks/naive.py``, one model call per symbol and one INSERT per row;
4. backfill: 30 daily windows in one run, as ``BackfillPolicy.multi_run(30)`` groups them, held
   against the daily bare model timed before and again after it (the machine drifts over minutes);
5. machine limit: fp32/bf16 matmul GFLOP/s against the model's 2 x params x tokens / seconds;
6. peak RSS of the pipeline and backfill processes; plus bfloat16 speed and p50 drift.

    python benchmarks/run.py [--quick] [--json FILE] [--device cpu|cuda]

``--quick`` shortens the context (daily 256, hourly 512 bars) for every measurement alike, so the
ratios compare like with like, and leaves out the hourly in-run pipeline and hourly fresh-process
model; without it the cadences' configured contexts (1024, 2048) are used.
PostgreSQL: ``DATABASE_URL`` when set, else an embedded server; a fresh database is created and
dropped. The checkpoint and server data are cached in ``benchmarks/.cache/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CHECKPOINT = CACHE / "chronos2-full-random"
TINY_CHECKPOINT = CACHE / "chronos2-tiny-random"
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

from workload import (  # noqa: E402
    BACKFILL_RANGE,
    BACKFILL_WINDOWS,
    WINDOWS,
    Workload,
    tokens,
    window_inputs,
)

from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.orchestration.partitions import DEFAULT_WINDOWS_PER_BACKFILL_RUN

QUICK_CONTEXT = {"1d": 256, "1h": 512}
# One backfill run's worth of windows per cadence (the default windows_per_backfill_run), for the
# overhead stage: the first window of each range, and the windows' spacing.
OVERHEAD_WINDOWS = dict(DEFAULT_WINDOWS_PER_BACKFILL_RUN)
_OVERHEAD_FIRST = {"1d": datetime(2025, 1, 1), "1h": datetime(2026, 3, 2)}
_KEY_FORMAT = {"1d": ("%Y-%m-%d", timedelta(days=1)), "1h": ("%Y-%m-%d-%H:%M", timedelta(hours=1))}
OVERHEAD_RANGES = {
    cadence: (first.strftime(_KEY_FORMAT[cadence][0]),
              (first + (OVERHEAD_WINDOWS[cadence] - 1) * _KEY_FORMAT[cadence][1]).strftime(_KEY_FORMAT[cadence][0]))
    for cadence, first in _OVERHEAD_FIRST.items()
}
HOURS_PER_YEAR = 8760
# The hourly bare model (23 instruments, context 2048) on one H200, fp32 (README: GPU column).
H200_HOURLY_MODEL_S = 0.08
# The daily pipeline's ratio to the bare model is reported, no longer a target: a single daily
# run cannot go below Dagster's own floor plus the chain's imports (README: Performance).
TARGETS = {
    "pipeline_over_model_1h": ("<=", 1.3),
    "pipeline_served_over_model_1h": ("<=", 1.3),
    "backfill_overhead_per_window_s_1d": ("<=", 0.05),
    "backfill_overhead_per_window_s_1h": ("<=", 0.05),
    "naive_over_pipeline": (">", 1.0),
    "naive_over_pipeline_served": (">", 1.0),
    "backfill_over_model": ("<=", 1.1),
    "model_over_fp32_peak": (">=", 0.7),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine


def machine(device: str) -> dict:
    import torch

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
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
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


# ---------------------------------------------------------------- bare model


def timed_predict(pipeline, inputs, work: Workload, device: str, reps: int) -> tuple[float, list[float], object]:
    """Median seconds of ``reps`` warm calls (after one warm-up call), all times, and the last output."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kwargs = dict(prediction_length=work.horizon, quantile_levels=[0.1, 0.5, 0.9], context_length=work.context_length)
    pipeline.predict_quantiles(inputs, **kwargs)  # warm-up: oneDNN/cuBLAS set-up for these shapes
    times, out = [], None
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out, _ = pipeline.predict_quantiles(inputs, **kwargs)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def bare_model(works: dict[str, Workload], device: str, reps: int) -> dict:
    import numpy as np

    from forecasting_pipeline.forecasting.model import load_chronos2

    results: dict = {}
    loaded = load_chronos2(str(CHECKPOINT), revision="benchmark", device=device, dtype="float32")
    params = sum(p.numel() for p in loaded.pipeline.model.parameters())
    results["parameters"] = params
    p50_fp32 = None
    for cadence, work in works.items():
        _, inputs = window_inputs(work)
        median, times, out = timed_predict(loaded.pipeline, inputs, work, device, reps)
        n_tokens = tokens(inputs, work.context_length, work.horizon)
        results[cadence] = {
            "series": len(inputs), "context_length": work.context_length, "horizon": work.horizon,
            "seconds": median, "all_seconds": times, "tokens": n_tokens,
            "gflops": 2 * params * n_tokens / median / 1e9,
        }
        if cadence == "1d":
            p50_fp32 = np.stack([q[0, :, 1].float().cpu().numpy() for q in out])
            daily_inputs = inputs
        log(f"bare model {cadence}: {median:.2f}s for {len(inputs)} series at context {work.context_length}")
    del loaded

    # bfloat16 on the same daily inputs: speed, and how far p50 moves from fp32.
    bf16 = load_chronos2(str(CHECKPOINT), revision="benchmark", device=device, dtype="bfloat16")
    median, times, out = timed_predict(bf16.pipeline, daily_inputs, works["1d"], device, reps)
    p50_bf16 = np.stack([q[0, :, 1].float().cpu().numpy() for q in out])
    rel = np.abs(p50_bf16 - p50_fp32) / np.abs(p50_fp32)
    results["bf16_1d"] = {
        "seconds": median, "all_seconds": times,
        "speedup_over_fp32": results["1d"]["seconds"] / median,
        "max_relative_p50_change": float(rel.max()),
        "median_relative_p50_change": float(np.median(rel)),
    }
    log(f"bare model 1d bf16: {median:.2f}s, max relative p50 change {rel.max():.2e}")
    del bf16
    return results


def bare_model_again(work: Workload, device: str, reps: int) -> float:
    """The daily bare model once more, after the backfill: a shared machine drifts over minutes."""
    from forecasting_pipeline.forecasting.model import load_chronos2

    loaded = load_chronos2(str(CHECKPOINT), revision="benchmark", device=device, dtype="float32")
    _, inputs = window_inputs(work)
    median, _times, _out = timed_predict(loaded.pipeline, inputs, work, device, reps)
    return median


# ---------------------------------------------------------------- database and Dagster instance


@contextmanager
def database():
    """A fresh, migrated database on DATABASE_URL's server or an embedded one; dropped afterwards."""
    import psycopg
    from psycopg import sql

    from forecasting_pipeline.storage.embedded_postgres import _with_database, embedded_server
    from forecasting_pipeline.storage.migrations import migrate

    @contextmanager
    def server():
        given = os.environ.get("DATABASE_URL")
        if given:
            yield given
        else:
            with embedded_server(CACHE / "pgdata") as url:
                yield url

    with server() as server_url:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(server_url, name)
        try:
            with psycopg.connect(url) as conn:
                migrate(conn)
            yield url
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def child_env(database_url: str, dagster_home: Path, device: str) -> dict[str, str]:
    from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url

    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DAGSTER_PG_URL": dagster_storage_url(database_url),
        "DAGSTER_HOME": str(dagster_home),
        "CHRONOS2_MODEL": str(CHECKPOINT),
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
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if kind in ("STEP_START", "STEP_SUCCESS"):
            steps.setdefault(event.step_key, {})[kind] = record.timestamp
        elif kind == "ASSET_MATERIALIZATION" and event.step_key == f"chronos2_forecasts_{cadence}":
            values = record.asset_materialization.metadata
            for key in ("model_load_seconds", "predict_seconds", "series", "device"):
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
        "write_s": span(f"ml_predictions_{c}"),
        "committed_s": (committed_at or steps[f"ml_predictions_{c}"]["STEP_SUCCESS"]) - started_at,
        "run_end_s": (run_end - started_at) if run_end else None,
        "device": metadata.get("device"),
        "series": metadata.get("series"),
        # Rows written (upserted) by ml_predictions: one per instrument and window.
        "rows": metadata.get("rows"),
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
def model_server(env: dict, home: Path, works: dict[str, Workload], checkpoint: Path = CHECKPOINT):
    """A ``forecasting-pipeline serve`` (the model server of runs) on the checkpoint, warmed by one batch per cadence.

    The warm-up batch is the one the bare model's untimed first call is: a server that has served
    the previous hourly or daily run has seen these shapes.
    """
    from forecasting_pipeline.forecasting.batch_wire import model_key
    from forecasting_pipeline.forecasting.service_client import ServiceUnavailable, readiness, service_forecast

    socket_path = str(home / "chronos2.sock")
    with (home / "model_server.log").open("w") as log_file:
        server = subprocess.Popen(
            [command("forecasting-pipeline"), "serve", "--port", str(_free_port()), "--socket", socket_path],
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
            service_forecast(socket_path, model_key(str(checkpoint), None, "float32"), inputs, work.horizon,
                             work.context_length)
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


def backfill_run(env: dict, home: Path, instance, work: Workload) -> dict:
    first, last = BACKFILL_RANGE
    config = home / "config_backfill.yaml"
    config.write_text(json.dumps(run_config(work) or {}))
    # One run over the range, as the multi_run(30) backfill policy launches it (`dagster asset
    # materialize --partition-range` only accepts single_run policies, so the job's range tags are used).
    argv = [command("dagster"), "job", "execute", "-m", "forecasting_pipeline.definitions",
            "-j", "chronos2_1d_job", "-c", str(config), "--tags",
            json.dumps({"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})]
    child = run_child(argv, env, home / "backfill.log")
    if child["returncode"] != 0:
        raise failed("the backfill", home / "backfill.log")
    return {**child, **run_timeline(instance, child["started_at"], "1d"), "windows": BACKFILL_WINDOWS}


def overhead_run(env: dict, home: Path, instance, cadence: str, context_length: int, served: bool) -> dict:
    """One backfill run over OVERHEAD_RANGES[cadence] on the tiny checkpoint: what a run costs beyond its model.

    The tiny model keeps the run short; what it measures is everything else a backfill run does
    per window (reading, validating, shaping, writing, Dagster's events), at the cadence's context.
    Model seconds are the forecast step's load and predict seconds. Load includes importing
    chronos, not torch, which the step imports first to choose the device: with the model in the
    run, torch's import counts as overhead. Through the model server, a run imports neither.
    """
    first, last = OVERHEAD_RANGES[cadence]
    config = home / f"config_overhead_{cadence}.yaml"
    config.write_text(json.dumps({"ops": {
        f"ohlcv_{cadence}": {"config": {"history_bars": context_length}},
        f"chronos2_forecasts_{cadence}": {"config": {"context_length": context_length}},
    }}))
    argv = [command("dagster"), "job", "execute", "-m", "forecasting_pipeline.definitions",
            "-j", f"chronos2_{cadence}_job", "-c", str(config), "--tags",
            json.dumps({"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})]
    label = f"overhead_{cadence}{'_served' if served else ''}"
    child = run_child(argv, {**env, "CHRONOS2_MODEL": str(TINY_CHECKPOINT)}, home / f"{label}.log")
    if child["returncode"] != 0:
        raise failed(f"the {label} backfill run", home / f"{label}.log")
    timeline = run_timeline(instance, child["started_at"], cadence)
    windows = OVERHEAD_WINDOWS[cadence]
    model_s = (timeline["model_load_s"] or 0.0) + timeline["predict_s"]
    return {**child, **timeline, "windows": windows, "model_s": model_s,
            "overhead_per_window_s": (child["wall_s"] - model_s) / windows}


def overhead_stage(env: dict, home: Path, instance, works: dict[str, Workload]) -> dict:
    """Per-window cost beyond the model of a backfill run, each cadence, model in the run and through a server."""
    if not (TINY_CHECKPOINT / "config.json").exists():
        from forecasting_pipeline.forecasting.model import write_random_checkpoint

        write_random_checkpoint(TINY_CHECKPOINT, "tiny")
    out: dict = {}
    for cadence in ("1d", "1h"):
        out[cadence] = overhead_run(env, home, instance, cadence, works[cadence].context_length, served=False)
        log(f"backfill overhead {cadence}: {out[cadence]['overhead_per_window_s']:.4f}s per window")
    tiny_works = {c: Workload(c, w.window, w.context_length, w.horizon) for c, w in works.items()}
    with model_server({**env, "CHRONOS2_MODEL": str(TINY_CHECKPOINT)}, home, tiny_works, TINY_CHECKPOINT) as (socket_path, _):
        for cadence in ("1d", "1h"):
            served = overhead_run({**env, "CHRONOS2_SERVER": socket_path}, home, instance, cadence,
                                  works[cadence].context_length, served=True)
            out[f"{cadence}_served"] = served
            log(f"backfill overhead {cadence} through the model server: {served['overhead_per_window_s']:.4f}s per window")
    return out


def gpu_year_of_hourly(r: dict) -> dict:
    """A year of hourly windows for 23 instruments on one GPU: per-window overhead plus the GPU model call.

    The GPU model time is this run's hourly bare model when it ran on CUDA, else the last H200
    figure measured at the hourly context (README: GPU column), named as such.
    """
    measured_here = r["machine"]["device"] == "cuda" and "bare" in r
    model_s = r["bare"]["1h"]["seconds"] if measured_here else H200_HOURLY_MODEL_S
    overhead = r["overhead"]["1h_served"]["overhead_per_window_s"]
    return {
        "windows": HOURS_PER_YEAR,
        "gpu_model_s_per_window": model_s,
        "gpu_model_source": "this run (cuda)" if measured_here else "H200, 2026-11-27 full-mode run (README)",
        "overhead_per_window_s": overhead,
        "seconds": HOURS_PER_YEAR * (model_s + overhead),
    }


def script_run(script: str, work: Workload, env: dict, home: Path, device: str) -> dict:
    """Run one of the plain benchmark scripts (bare_process.py, naive.py) and read its JSON line."""
    argv = [sys.executable, str(HERE / script), "--checkpoint", str(CHECKPOINT), "--cadence", work.cadence,
            "--window", work.window, "--context", str(work.context_length), "--horizon", str(work.horizon),
            "--device", device]
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
    bare_1d = r["bare"]["1d"]["seconds"]
    pipeline_1d = r["pipeline"]["1d"]["committed_s"]
    served_1d = r["pipeline_served"]["1d"]["committed_s"]
    floor = r["dagster_floor"]["step_done_s"]
    return {
        "pipeline_over_model": pipeline_1d / bare_1d,
        "pipeline_served_over_model": served_1d / bare_1d,
        "pipeline_served_over_model_1h": r["pipeline_served"]["1h"]["committed_s"] / r["bare"]["1h"]["seconds"],
        # No pipeline through Dagster's CLI can beat the model plus a no-op run.
        "floor_over_model": (bare_1d + floor) / bare_1d,
        "floor_over_model_1h": (r["bare"]["1h"]["seconds"] + floor) / r["bare"]["1h"]["seconds"],
        "pipeline_over_model_process": pipeline_1d / r["bare_process"]["1d"]["model_process_s"],
        # Quick mode leaves out the hourly in-run pipeline and fresh-process model (see main).
        **({
            "pipeline_over_model_1h": r["pipeline"]["1h"]["committed_s"] / r["bare"]["1h"]["seconds"],
            "pipeline_over_model_process_1h":
                r["pipeline"]["1h"]["committed_s"] / r["bare_process"]["1h"]["model_process_s"],
        } if "1h" in r["pipeline"] else {}),
        "naive_over_pipeline": r["naive"]["1d"]["wall_s"] / pipeline_1d,
        "naive_over_pipeline_served": r["naive"]["1d"]["wall_s"] / served_1d,
        # Against the bare model timed before and after it, since the backfill takes minutes.
        "backfill_over_model": r["backfill"]["committed_s"] / (BACKFILL_WINDOWS * (bare_1d + r["bare_1d_after"]) / 2),
        "bare_model_after_over_before": r["bare_1d_after"] / bare_1d,
        "model_over_fp32_peak": r["bare"]["1d"]["gflops"] / r["machine_limit"]["fp32_gflops"],
        "model_over_fp32_peak_1h": r["bare"]["1h"]["gflops"] / r["machine_limit"]["fp32_gflops"],
    }


def overhead_keys(r: dict) -> dict:
    """The backfill-overhead figures: per window beyond the model, model in the run and through a server."""
    o = r["overhead"]
    return {
        "backfill_overhead_per_window_s_1d": o["1d_served"]["overhead_per_window_s"],
        "backfill_overhead_per_window_s_1h": o["1h_served"]["overhead_per_window_s"],
        "backfill_overhead_per_window_s_1d_model_in_run": o["1d"]["overhead_per_window_s"],
        "backfill_overhead_per_window_s_1h_model_in_run": o["1h"]["overhead_per_window_s"],
        "year_of_hourly_on_one_gpu_s": gpu_year_of_hourly(r)["seconds"],
    }


@contextmanager
def project_instance(device: str):
    """A database, a DAGSTER_HOME with the project's dagster.yaml on it, the child processes' env, and the instance."""
    with database() as database_url, tempfile.TemporaryDirectory(dir=CACHE, prefix="dagster_home_") as tmp:
        home = Path(tmp)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = child_env(database_url, home, device)
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")})
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            yield env, home, instance


def overhead_only(results: dict, works: dict[str, Workload], args) -> int:
    with project_instance(args.device) as (env, home, instance):
        results["overhead"] = overhead_stage(env, home, instance, works)
    LAUNCHER.stdin.close()
    LAUNCHER.wait()
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["ratios"] = overhead_keys(results)
    results["year_of_hourly_on_one_gpu"] = gpu_year_of_hourly(results)
    results.update(results["ratios"])
    print(overhead_report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def overhead_report(r: dict) -> str:
    lines = [f"| backfill run (tiny model; windows: {', '.join(f'{c} {n}' for c, n in OVERHEAD_WINDOWS.items())}) | wall s | model s (load + predict) | beyond the model, per window |",
             "|---|---|---|---|"]
    for key, o in r["overhead"].items():
        lines.append(f"| {key.replace('_served', ' through the model server')} | {o['wall_s']:.2f} | {o['model_s']:.2f} "
                     f"| {o['overhead_per_window_s']:.4f} |")
    year = gpu_year_of_hourly(r)
    lines.append(f"\nA year of hourly windows on one GPU: {year['seconds'] / 60:.1f} min = {year['windows']} x "
                 f"({year['gpu_model_s_per_window']} s model [{year['gpu_model_source']}] + "
                 f"{year['overhead_per_window_s']:.4f} s beyond it)")
    lines += [f"{k}: {v:.4f}  {verdict(k, v)}" for k, v in r["ratios"].items()]
    return "\n".join(lines)


def verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = {"<=": value <= bound, ">": value > bound, ">=": value >= bound}[op]
    return f"target {op} {bound}: {'met' if ok else 'MISSED'}"


def f2(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(r: dict) -> str:
    m = r["machine"]
    label = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
    if m["device"] == "cuda":
        label += f", GPU {m.get('gpu')}"
    lines = [f"machine: {label}; load average at start {m['load_average_at_start'][0]:.2f}",
             f"settings: {json.dumps(r['settings'])}", ""]
    # Only the load before the benchmark says anything: at the end it includes the benchmark's own threads.
    if m["load_average_at_start"][0] > 0.5 * m["cores"]:
        lines += [f"WARNING: other processes were busy (load average {m['load_average_at_start'][0]:.1f} at start, "
                  f"{m['load_average_at_end'][0]:.1f} at end, {m['cores']} cores): CPU figures are unreliable.", ""]
    lines += [ "| ratio | value | |", "|---|---|---|"]
    for key, value in r["ratios"].items():
        lines.append(f"| {key} | {value:.2f} | {verdict(key, value)} |")
    lines += ["", "| measurement | seconds | peak RSS (MB) |", "|---|---|---|"]
    for c in ("1d", "1h"):
        b = r["bare"][c]
        lines.append(f"| bare model {c} ({b['series']} series, context {b['context_length']}, "
                     f"{b['tokens']} tokens, {b['gflops']:.0f} GFLOP/s) | {b['seconds']:.2f} | |")
    lines.append(f"| bare model 1d again, after the backfill | {r['bare_1d_after']:.2f} | |")
    bf = r["bare"]["bf16_1d"]
    lines.append(f"| bare model 1d bfloat16 ({bf['speedup_over_fp32']:.2f}x fp32; max relative p50 change "
                 f"{bf['max_relative_p50_change']:.1e}) | {bf['seconds']:.2f} | |")
    for c in r["pipeline"]:
        p = r["pipeline"][c]
        lines.append(f"| pipeline {c}, process start to exit ({p['rows']} rows) | {p['wall_s']:.2f} | {p['peak_rss_mb']:.0f} |")
        lines.append(
            f"| &nbsp; start-up {p['startup_s']:.2f} / data {p['data_s']:.2f} / features {p['features_s']:.2f} / "
            f"model {p['model_s']:.2f} (load {f2(p['model_load_s'])}, predict {f2(p['predict_s'])}, on {p['device']}) / "
            f"write {p['write_s']:.2f} / rows committed at {p['committed_s']:.2f} | | |")
    for c in ("1d", "1h"):
        p = r["pipeline_served"][c]
        lines.append(f"| pipeline {c} through the warm model server, process start to exit ({p['rows']} rows) "
                     f"| {p['wall_s']:.2f} | {p['peak_rss_mb']:.0f} |")
        lines.append(
            f"| &nbsp; start-up {p['startup_s']:.2f} / data {p['data_s']:.2f} / features {p['features_s']:.2f} / "
            f"model {p['model_s']:.2f} (predict {f2(p['predict_s'])} in the server) / "
            f"write {p['write_s']:.2f} / rows committed at {p['committed_s']:.2f} | | |")
    ms = r["model_server"]
    lines.append(f"| model server: start to ready (imports + load, once) | {ms['start_s']:.2f} | {f2(ms['peak_rss_mb'])} |")
    fl = r["dagster_floor"]
    lines.append(f"| Dagster's floor: one no-op asset through the same CLI, process start to step done "
                 f"(exit {fl['wall_s']:.2f}) | {fl['step_done_s']:.2f} | {fl['peak_rss_mb']:.0f} |")
    for c in r["bare_process"]:
        bp = r["bare_process"][c]
        lines.append(f"| bare model {c} in a fresh process: import {bp['imports_s']:.2f} + load {bp['load_s']:.2f} "
                     f"+ first call {bp['first_call_s']:.2f} | {bp['model_process_s']:.2f} | {bp['peak_rss_mb']:.0f} |")
    n = r["naive"]["1d"]
    lines.append(f"| naive peer 1d, process start to exit ({n['rows']} rows; predict {n['predict_s']:.2f}, "
                 f"{n['rows']} INSERTs {n['write_s']:.2f}) | {n['wall_s']:.2f} | {n['peak_rss_mb']:.0f} |")
    b = r["backfill"]
    lines.append(f"| backfill, {b['windows']} daily windows in one run ({b['rows']} rows; predict {f2(b['predict_s'])}) "
                 f"| {b['wall_s']:.2f} | {b['peak_rss_mb']:.0f} |")
    ml = r["machine_limit"]
    lines.append(f"| matmul peak: fp32 {ml['fp32_gflops']:.0f} GFLOP/s, bf16 {ml['bf16_gflops']:.0f} GFLOP/s | | |")
    lines.append(f"| whole benchmark | {r['benchmark_seconds']:.0f} | |")
    if "overhead" in r:
        lines.append("")
        lines.append(overhead_report(r))
    return "\n".join(lines)


def pipeline_stages(results: dict, works: dict[str, Workload], backfill_work: Workload, device: str, reps: int) -> None:
    """Every stage that runs the pipeline on one instance: single windows, the floor, the server, backfills."""
    quick = results["settings"]["mode"] == "quick"
    with project_instance(device) as (env, home, instance):
        # --quick keeps under 3 minutes by leaving out the hourly in-run pipeline and hourly
        # fresh-process model; the hourly pipeline still runs through the model server.
        in_run = ("1d",) if quick else ("1d", "1h")
        results["pipeline"] = {}
        for c in in_run:
            results["pipeline"][c] = median_run(reps, lambda: pipeline_run(works[c], env, home, instance))
            log(f"pipeline {c}: {results['pipeline'][c]['wall_s']:.2f}s, {results['pipeline'][c]['rows']} rows")
        results["dagster_floor"] = dagster_floor(env, home, instance)
        log(f"Dagster floor: {results['dagster_floor']['step_done_s']:.2f}s")
        with model_server(env, home, works) as (socket_path, server_info):
            served_env = {**env, "CHRONOS2_SERVER": socket_path}
            results["pipeline_served"] = {}
            for c in ("1d", "1h"):
                results["pipeline_served"][c] = median_run(
                    reps, lambda: pipeline_run(works[c], served_env, home, instance, "pipeline_served")
                )
                log(f"pipeline {c} through the model server: {results['pipeline_served'][c]['wall_s']:.2f}s")
        results["model_server"] = server_info
        results["bare_process"] = {c: script_run("bare_process.py", works[c], env, home, device) for c in in_run}
        log(f"bare model in a fresh process 1d: {results['bare_process']['1d']['model_process_s']:.2f}s")
        results["naive"] = {"1d": script_run("naive.py", works["1d"], env, home, device)}
        log(f"naive 1d: {results['naive']['1d']['wall_s']:.2f}s")
        results["backfill"] = backfill_run(env, home, instance, backfill_work)
        log(f"backfill: {results['backfill']['wall_s']:.2f}s, {results['backfill']['rows']} rows")
        results["bare_1d_after"] = bare_model_again(works["1d"], device, reps)
        log(f"bare model 1d again: {results['bare_1d_after']:.2f}s")
        results["overhead"] = overhead_stage(env, home, instance, works)
        keep = CACHE / "last_logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(home, keep, ignore=shutil.ignore_patterns("storage", "*.yaml"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short contexts (1d 256, 1h 512) and 1 timed repetition")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--reps", type=int, help="timed repetitions of the bare model and of each pipeline run (default: quick 1, else 3)")
    parser.add_argument("--only", choices=["overhead"], help="only the backfill-overhead stage (minutes, tiny model)")
    args = parser.parse_args()
    began = time.perf_counter()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    reps = args.reps or (1 if args.quick else 3)
    works = {
        c: Workload(c, WINDOWS[c], QUICK_CONTEXT[c] if args.quick else CADENCES[c].context_length, CADENCES[c].horizon)
        for c in ("1d", "1h")
    }
    backfill_work = Workload("1d", BACKFILL_RANGE[0], works["1d"].context_length, works["1d"].horizon)
    CACHE.mkdir(exist_ok=True)
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(args.device),
        "settings": {
            "mode": "quick" if args.quick else "full", "device": args.device, "reps": reps,
            "context_1d": works["1d"].context_length, "context_1h": works["1h"].context_length,
            "horizon_1d": works["1d"].horizon, "horizon_1h": works["1h"].horizon,
            "window_1d": works["1d"].window, "window_1h": works["1h"].window,
            "backfill": f"{BACKFILL_RANGE[0]}...{BACKFILL_RANGE[1]} ({BACKFILL_WINDOWS} windows, one run)",
            "token_formula": "variates x (ceil(context/16) + 1 REG + ceil(horizon/16)); variates = 3 per instrument",
            "gflops_formula": "2 x parameters x tokens / seconds",
        },
    }
    log(f"machine: {results['machine']}")
    if args.only == "overhead":
        return overhead_only(results, works, args)
    if not (CHECKPOINT / "config.json").exists():
        from forecasting_pipeline.forecasting.model import write_random_checkpoint

        log(f"writing the full-size random checkpoint to {CHECKPOINT} (once)")
        write_random_checkpoint(CHECKPOINT, "full")

    quick_s = 1.0 if args.quick else 2.0
    results["machine_limit"] = {
        "fp32_gflops": matmul_gflops(args.device, "float32", quick_s),
        "bf16_gflops": matmul_gflops(args.device, "bfloat16", quick_s),
    }
    log(f"matmul peak: {results['machine_limit']}")
    results["bare"] = bare_model(works, args.device, reps)
    # Measured again after the model: a busy moment elsewhere on the machine lowers one sample.
    for dtype in ("float32", "bfloat16"):
        key = {"float32": "fp32_gflops", "bfloat16": "bf16_gflops"}[dtype]
        results["machine_limit"][key] = max(results["machine_limit"][key], matmul_gflops(args.device, dtype, quick_s))
    log(f"matmul peak (best of two samples): {results['machine_limit']}")

    pipeline_stages(results, works, backfill_work, args.device, reps)

    LAUNCHER.stdin.close()
    LAUNCHER.wait()
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["ratios"] = ratios(results) | overhead_keys(results)
    results.update({k: v for k, v in results["ratios"].items()})
    results["benchmark_seconds"] = time.perf_counter() - began
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
