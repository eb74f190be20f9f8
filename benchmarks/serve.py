"""Serving benchmark: the forecast service's latency and throughput, alone and beside a backfill run, in one run.

Starts ``forecasting-pipeline serve`` on loopback with the FULL-size random-weight checkpoint (the
published geometry, so the real compute cost; ``forecasting-pipeline init-model --size full``) and
drives ``POST /predict-chronos2`` with known-instrument daily requests (the 23 instruments in turn,
from the sample source). Everything below is measured in the same run:

The service under load (``--only sweep``):

- p50/p95/p99 latency and throughput at 1, 4, 8 and 16 concurrent clients;
- ``served_over_bare_throughput``: series/s served at 16 clients ÷ series/s of the bare model doing
  one batched call of 16 of the same series in this process. Target >= 0.8;
- ``batched_over_unbatched_throughput``: series/s at 16 clients with micro-batching on ÷ the same
  with batching off (``PREDICT_BATCH_MAX_SERIES=1``, a second service);
- ``serve_p95_s_c8``: p95 latency at 8 clients, target < 5 s, and ``serve_p95_c8_over_bare_call_8``,
  that p95 ÷ the bare model's time for one call of 8 series (the floor of any answer at 8 clients).

On-demand requests beside a backfill (``--only backfill``): a backfill run's model batch (``--windows``
daily windows x 23 instruments, 1024 bars, the batch a multi-window run sends) goes through the
service's Unix socket, as a run with ``CHRONOS2_SERVER`` sends it, first alone, then while on-demand
requests arrive:

- p50/p95 idle and during the backfill, with 1 client sending one request every 2 s and with 8
  clients sending back to back; ``serve_p95_s_during_backfill`` is the 1-client p95 (target < 5 s);
- ``backfill_throughput_beside_serve_over_alone``: the backfill's series/s beside the 1-client
  traffic ÷ alone (target >= 0.8); beside 8 clients it is reported too (the model is shared: there
  the on-demand work takes its turn between chunks);
- ``serve_p95_s_gpu_lock_held``: 1-client p95 while another process holds the GPU advisory lock
  (as Kronos does while it runs). On-demand work never waits for it: on a GPU machine it takes the
  CPU at once; where there is no CUDA the lock is not consulted at all (the report says which).

The machine this runs on may be shared, and the CPU share it gets can change several-fold within
minutes. So both services run at once (idle between measurements), the sweep's throughput ratios
come from ``--rounds`` interleaved rounds (bare call, batching on, batching off, bare call), and the
backfill's two runs (alone, beside) are timed back to back, twice, in alternating order; the median
is reported, and every measurement.

    python benchmarks/serve.py [--quick | --smoke] [--only sweep|backfill] [--json FILE] [--device cpu|cuda|auto]

``--quick`` uses a 256-bar context and fewer requests; ``--smoke`` the tiny checkpoint, a 64-bar
context, two windows and a few requests (seconds; the test suite runs it). PostgreSQL (the GPU
lock's database): ``DATABASE_URL`` when set, else an embedded server. The checkpoints are cached in
``benchmarks/.cache/`` (shared with run.py). The load average is recorded at the start and the
end; only ratios measured here should be read across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
CHECKPOINTS = {"full": CACHE / "chronos2-full-random", "tiny": CACHE / "chronos2-tiny-random"}
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(HERE))

CONCURRENCY = (1, 4, 8, 16)
SATURATION = 16
CONTEXTS = {"full": 1024, "quick": 256, "smoke": 64}
HORIZON = 10
PACE_S = 2.0
TARGETS = {"served_over_bare_throughput": (">=", 0.8), "serve_p95_s_c8": ("<", 5.0),
           "serve_p95_s_during_backfill": ("<", 5.0), "backfill_throughput_beside_serve_over_alone": (">=", 0.8),
           "serve_p95_s_gpu_lock_held": ("<", 5.0)}
CHECKPOINT = CHECKPOINTS["full"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def symbols() -> list[str]:
    from forecasting_pipeline.market.instruments import load_instruments

    return [i.symbol for i in load_instruments()]


# ---------------------------------------------------------------- the service


@contextmanager
def services(database_url: str, device: str, logs: Path, batch_max_series: tuple[int, ...]):
    """Running services on the checkpoint, started together; yields (url, socket) of each once /readyz says ready."""
    started = []
    try:
        for index, max_series in enumerate(batch_max_series):
            port, socket_path = free_port(), str(logs / f"s{index}.sock")
            env = {**os.environ, "DATABASE_URL": database_url, "CHRONOS2_MODEL": str(CHECKPOINT),
                   "CHRONOS2_DEVICE": device, "PREDICT_BATCH_MAX_SERIES": str(max_series), "PREDICT_API_TOKEN": ""}
            log_file = logs / f"service-{index}.log"
            with log_file.open("w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "forecasting_pipeline.cli", "serve", "--port", str(port), "--socket", socket_path],
                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                )
            started.append((process, f"http://127.0.0.1:{port}", socket_path, log_file))
        for process, url, _socket, log_file in started:
            wait_ready(process, url, log_file)
        yield [(url, socket_path) for _process, url, socket_path, _log in started]
    finally:
        for process, *_ in started:
            process.terminate()
        for process, *_ in started:
            process.wait(timeout=60)


def wait_ready(process: subprocess.Popen, url: str, log_file: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the service at {url} was not ready within 300 s")


REFUSED = -1.0


def predict(url: str, symbol: str, context: int, devices: list | None = None) -> float:
    """One request's latency in seconds, or REFUSED for a 503 (over the queue bound or the deadline).

    Raises on any other status. ``devices`` collects where each answer ran, and why.
    """
    body = json.dumps({"symbol": symbol, "timeframe": "1d", "horizon": HORIZON, "context_length": context}).encode()
    request = urllib.request.Request(f"{url}/predict-chronos2", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            payload = answer.read()
    except urllib.error.HTTPError as error:
        if error.code != 503:
            raise
        return REFUSED
    if devices is not None:
        found = json.loads(payload)
        devices.append(f"{found['device']}: {found['device_reason']}")
    return time.perf_counter() - started


def drive(url: str, clients: int, per_client: int, context: int) -> dict:
    """``clients`` threads, each sending ``per_client`` requests in turn; latency percentiles and throughput."""
    names = symbols()

    def client(index: int) -> list[float]:
        return [predict(url, names[(index * per_client + k) % len(names)], context) for k in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sent = [t for one in pool.map(client, range(clients)) for t in one]
    wall = time.perf_counter() - started
    latencies = sorted(t for t in sent if t != REFUSED)
    return {
        "clients": clients, "requests": len(sent), "refused": len(sent) - len(latencies), "wall_s": wall,
        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "p99_s": percentile(latencies, 99),
        "series_per_s": len(latencies) / wall, "latencies": sent,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples the tail is the largest of them, not an interpolation); NaN of none."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


# ---------------------------------------------------------------- the bare model


class Bare:
    """The model alone, in this process: batched calls on the requests' own series, as the service makes them."""

    def __init__(self, device: str, context: int) -> None:
        from datetime import datetime, timezone

        from forecasting_pipeline.forecasting.on_demand import known_series
        from forecasting_pipeline.forecasting.runner import Chronos2Runner
        from forecasting_pipeline.market.cadences import DAILY
        from forecasting_pipeline.market.instruments import load_instruments
        from forecasting_pipeline.market.sources import SampleSource
        from forecasting_pipeline.market.validation import ValidationConfig

        universe, now = load_instruments(), datetime.now(timezone.utc)
        self.series = [
            known_series(SampleSource(), universe[i % len(universe)], DAILY, HORIZON, context, (0.1, 0.5, 0.9), now,
                         ValidationConfig()).model_input
            for i in range(SATURATION)
        ]
        self.context = context
        self.runner = Chronos2Runner(model=str(CHECKPOINT), device=device, lock_database_url=os.environ.get("DATABASE_URL"))
        self.seconds(SATURATION)  # warm-up

    def seconds(self, n_series: int) -> float:
        """One call of the first ``n_series`` series."""
        from forecasting_pipeline.forecasting.predict import MODEL_QUANTILE_LEVELS

        started = time.perf_counter()
        self.runner.predict_here(self.series[:n_series], HORIZON, self.context, quantile_levels=MODEL_QUANTILE_LEVELS, sort=False)
        return time.perf_counter() - started


def throughput_round(bare: Bare, on: str, off: str, per_client: int, context: int) -> dict:
    """Bare call, 16 clients with batching on, then off, bare call again: series/s of each, seconds apart."""
    before = bare.seconds(SATURATION)
    batched = drive(on, SATURATION, per_client, context)
    unbatched = drive(off, SATURATION, per_client, context)
    batched.pop("latencies"), unbatched.pop("latencies")
    after = bare.seconds(SATURATION)
    bare_rate = SATURATION / ((before + after) / 2)
    out = {"bare_series_per_s": bare_rate, "batched_series_per_s": batched["series_per_s"],
           "unbatched_series_per_s": unbatched["series_per_s"], "load_average": os.getloadavg()[0],
           "served_over_bare_throughput": batched["series_per_s"] / bare_rate,
           "batched_over_unbatched_throughput": batched["series_per_s"] / unbatched["series_per_s"]}
    log(f"round: {json.dumps(out)}")
    return out


# ---------------------------------------------------------------- beside a backfill


def backfill_inputs(windows: int, context: int) -> list[dict]:
    """The model batch of a backfill run over ``windows`` daily windows: 23 instruments each, as the run sends it."""
    from datetime import date, timedelta

    from workload import BACKFILL_RANGE, Workload, window_inputs

    first = date.fromisoformat(BACKFILL_RANGE[0])
    keys = [(first + timedelta(days=i)).isoformat() for i in range(windows)]
    return [x for key in keys for x in window_inputs(Workload("1d", key, context, HORIZON))[1]]


def run_backfill(socket_path: str, inputs: list[dict], context: int, device: str) -> dict:
    """The batch through the service's socket, as a run with CHRONOS2_SERVER sends it; series/s and where it ran."""
    from forecasting_pipeline.forecasting.runner import Chronos2Runner

    runner = Chronos2Runner(model=str(CHECKPOINT), device=device, server_socket=socket_path, server_timeout_s=120)
    started = time.perf_counter()
    done = runner.predict(inputs, HORIZON, context)
    wall = time.perf_counter() - started
    if not done.device_run.model_process.startswith("forecast service"):
        raise RuntimeError(f"the backfill did not run in the service: {done.device_run.model_process}")
    return {"series": len(inputs), "wall_s": wall, "series_per_s": len(inputs) / wall, "device": done.device_run.device}


def paced(url: str, context: int, until: threading.Event, devices: list | None = None) -> list[float]:
    """One client, one request every PACE_S seconds until ``until`` is set (the issue's probe)."""
    names, latencies, k = symbols(), [], 0
    while not until.is_set():
        started = time.perf_counter()
        latencies.append(predict(url, names[k % len(names)], context, devices))
        k += 1
        until.wait(max(0.0, PACE_S - (time.perf_counter() - started)))
    return latencies


def back_to_back(url: str, clients: int, context: int, until: threading.Event) -> list[float]:
    """``clients`` clients, each sending requests one after another until ``until`` is set."""
    names = symbols()

    def client(index: int) -> list[float]:
        out, k = [], 0
        while not until.is_set():
            out.append(predict(url, names[(index + k) % len(names)], context))
            k += 1
        return out

    with ThreadPoolExecutor(clients) as pool:
        return [t for one in pool.map(client, range(clients)) for t in one]


def beside(traffic, socket_path: str, inputs: list[dict], context: int, device: str) -> tuple[dict, list[float]]:
    """The backfill while ``traffic(until)`` sends on-demand requests; the traffic stops when the backfill ends."""
    until = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(traffic, until)
        try:
            backfill = run_backfill(socket_path, inputs, context, device)
        finally:
            until.set()
        return backfill, sent.result()


def latencies_summary(values: list[float]) -> dict:
    """Percentiles of the answered requests; 503 refusals counted apart (each was answered within the deadline)."""
    ordered = sorted(v for v in values if v != REFUSED)
    return {"requests": len(values), "refused": len(values) - len(ordered), "p50_s": percentile(ordered, 50),
            "p95_s": percentile(ordered, 95), "max_s": ordered[-1] if ordered else float("nan"),
            "over_5_s": sum(v > 5.0 for v in ordered)}


@contextmanager
def gpu_lock_held(database_url: str):
    """Another process holding the GPU advisory lock (as Kronos does while it runs) for the block."""
    from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, psycopg; c = psycopg.connect(sys.argv[1], autocommit=True); "
         f"c.execute('SELECT pg_advisory_lock({GPU_LOCK_KEY})'); print('held', flush=True); sys.stdin.read()",
         database_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        if holder.stdout.readline().strip() != "held":
            raise RuntimeError("the lock holder did not take the GPU lock")
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def backfill_scenario(url: str, socket_path: str, database_url: str, device: str, context: int, windows: int,
                      probe_s: float) -> dict:
    """Idle latency, the backfill alone and beside 1 paced client (twice, alternating), beside 8 clients, lock held."""
    inputs = backfill_inputs(windows, context)
    log(f"backfill batch: {len(inputs)} series of {context} bars ({windows} daily windows)")
    out: dict = {"windows": windows, "series": len(inputs)}
    stop = threading.Event()
    threading.Timer(probe_s, stop.set).start()
    out["idle_c1"] = latencies_summary(paced(url, context, stop))
    out["idle_c8"] = latencies_summary(drive(url, 8, 3, context)["latencies"])
    log(f"idle: {json.dumps({k: out[k] for k in ('idle_c1', 'idle_c8')})}")
    pairs = []
    for order in ("alone first", "beside first"):
        runs = {}
        for which in (("alone", "beside") if order == "alone first" else ("beside", "alone")):
            if which == "alone":
                runs["alone"] = run_backfill(socket_path, inputs, context, device)
            else:
                runs["beside"], runs["latencies"] = beside(lambda until: paced(url, context, until), socket_path,
                                                           inputs, context, device)
        pair = {"order": order, "load_average": os.getloadavg()[0], "alone": runs["alone"], "beside": runs["beside"],
                "during_c1": latencies_summary(runs["latencies"]),
                "over_alone": runs["beside"]["series_per_s"] / runs["alone"]["series_per_s"]}
        log(f"backfill pair: {json.dumps(pair)}")
        pairs.append(pair)
    out["pairs"] = pairs
    backfill_c8, latencies = beside(lambda until: back_to_back(url, 8, context, until), socket_path, inputs, context, device)
    out["beside_c8"] = {"backfill": backfill_c8, "during_c8": latencies_summary(latencies),
                        "over_alone": backfill_c8["series_per_s"] / statistics.median(p["alone"]["series_per_s"] for p in pairs)}
    log(f"beside 8 clients: {json.dumps(out['beside_c8'])}")
    devices: list[str] = []
    with gpu_lock_held(database_url):
        stop = threading.Event()
        threading.Timer(probe_s, stop.set).start()
        out["lock_held_c1"] = latencies_summary(paced(url, context, stop, devices))
    out["lock_held_devices"] = sorted(set(devices))
    log(f"GPU lock held elsewhere: {json.dumps(out['lock_held_c1'])}, answered on {out['lock_held_devices']}")
    return out


# ---------------------------------------------------------------- main


def database():
    from forecasting_pipeline.storage.embedded_postgres import embedded_server

    given = os.environ.get("DATABASE_URL")
    if given:
        @contextmanager
        def same():
            yield given
        return same()
    return embedded_server(CACHE / "pgdata")


def main() -> int:
    global CHECKPOINT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="256-bar context and fewer requests")
    size.add_argument("--smoke", action="store_true", help="tiny checkpoint, 64-bar context, few requests: seconds")
    parser.add_argument("--only", choices=["sweep", "backfill"], help="one part (default both)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--requests", type=int, help="requests per client in the sweep (default 6, quick 3, smoke 1)")
    parser.add_argument("--rounds", type=int, help="interleaved throughput rounds (default 3, smoke 1)")
    parser.add_argument("--windows", type=int, help="daily windows in the backfill (default 24, quick 6, smoke 2)")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    context = CONTEXTS[mode]
    per_client = args.requests or {"full": 6, "quick": 3, "smoke": 1}[mode]
    rounds = args.rounds or (1 if args.smoke else 3)
    windows = args.windows or {"full": 24, "quick": 6, "smoke": 2}[mode]
    probe_s = {"full": 20.0, "quick": 10.0, "smoke": 1.0}[mode]
    CHECKPOINT = CHECKPOINTS["tiny" if args.smoke else "full"]

    if not (CHECKPOINT / "config.json").exists():
        from forecasting_pipeline.forecasting.model import write_random_checkpoint

        log(f"writing the random checkpoint to {CHECKPOINT} (once)")
        write_random_checkpoint(CHECKPOINT, "tiny" if args.smoke else "full")
    import torch

    results: dict = {
        "mode": mode, "device": args.device, "context_length": context, "horizon": HORIZON,
        "requests_per_client": per_client, "rounds_asked": rounds, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average_at_start": list(os.getloadavg()),
    }
    logs = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    with database() as url:
        os.environ["DATABASE_URL"] = url
        sizes = (32,) if args.only == "backfill" else (32, 1)
        with services(url, args.device, logs, sizes) as running:
            (on, on_socket) = running[0]
            for base, _socket in running:
                predict(base, "AAPL", context)  # warm-up
            if args.only != "backfill":
                sweep(results, running, args.device, context, per_client, rounds)
            if args.only != "sweep":
                results["backfill"] = backfill_scenario(on, on_socket, url, args.device, context, windows, probe_s)
    results["load_average_at_end"] = list(os.getloadavg())
    results["ratios"] = ratios(results)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def sweep(results: dict, running: list, device: str, context: int, per_client: int, rounds: int) -> None:
    (on, _), (off, _) = running
    bare = Bare(device, context)
    results["batched"] = {}
    for clients in CONCURRENCY:
        before = bare.seconds(8) if clients == 8 else None
        measured = drive(on, clients, per_client, context)
        measured.pop("latencies")
        results["batched"][clients] = measured
        if before is not None:
            results["bare_call_8_s"] = (before + bare.seconds(8)) / 2
        log(f"batched, {clients} clients: {json.dumps(results['batched'][clients])}")
    # Shorter bursts than the latency sweep: the rounds are about ratios, and each should fit one stretch of load.
    burst = max(2, per_client // 2)
    results["rounds"] = [throughput_round(bare, on, off, burst, context) for _ in range(rounds)]


def ratios(r: dict) -> dict:
    out = {}
    if "rounds" in r:
        out.update({
            "served_over_bare_throughput": statistics.median(x["served_over_bare_throughput"] for x in r["rounds"]),
            "batched_over_unbatched_throughput": statistics.median(x["batched_over_unbatched_throughput"] for x in r["rounds"]),
            "serve_p95_s_c8": r["batched"][8]["p95_s"],
            "serve_p95_c8_over_bare_call_8": r["batched"][8]["p95_s"] / r["bare_call_8_s"],
        })
    if "backfill" in r:
        b = r["backfill"]
        out.update({
            "serve_p95_s_during_backfill": max(p["during_c1"]["p95_s"] for p in b["pairs"]),
            "backfill_throughput_beside_serve_over_alone": statistics.median(p["over_alone"] for p in b["pairs"]),
            "serve_p95_s_during_backfill_c8": b["beside_c8"]["during_c8"]["p95_s"],
            "backfill_throughput_beside_8_clients_over_alone": b["beside_c8"]["over_alone"],
            "serve_p95_s_gpu_lock_held": b["lock_held_c1"]["p95_s"],
        })
    return out


def report(r: dict) -> str:
    lines = [f"serving benchmark ({r['mode']}, {r['device']}, context {r['context_length']}, horizon {r['horizon']}; "
             f"load {r['load_average_at_start'][0]:.1f} -> {r['load_average_at_end'][0]:.1f})"]
    if "batched" in r:
        lines += [f"{r['requests_per_client']} requests per client",
                  "| clients | requests | refused (503) | p50 s | p95 s | p99 s | series/s |", "|---|---|---|---|---|---|---|"]
        for clients, m in r["batched"].items():
            lines.append(f"| {clients} | {m['requests']} | {m['refused']} | {m['p50_s']:.2f} | {m['p95_s']:.2f} | "
                         f"{m['p99_s']:.2f} | {m['series_per_s']:.2f} |")
        lines.append(f"bare model, one call of 8 series around the 8-client run: {r['bare_call_8_s']:.2f} s")
        lines.append("| round | load | bare series/s (16 in one call) | served, batching on | batching off | served/bare | on/off |")
        lines.append("|---|---|---|---|---|---|---|")
        for i, x in enumerate(r["rounds"], start=1):
            lines.append(f"| {i} | {x['load_average']:.1f} | {x['bare_series_per_s']:.2f} | {x['batched_series_per_s']:.2f} | "
                         f"{x['unbatched_series_per_s']:.2f} | {x['served_over_bare_throughput']:.2f} | "
                         f"{x['batched_over_unbatched_throughput']:.2f} |")
    if "backfill" in r:
        b = r["backfill"]
        lines += [f"backfill: {b['windows']} daily windows, {b['series']} series through the service's socket",
                  "| phase | load | requests | refused (503) | p50 s | p95 s | max s | over 5 s | backfill series/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        row = "| {} | {} | {requests} | {refused} | {p50_s:.2f} | {p95_s:.2f} | {max_s:.2f} | {over_5_s} | {} |"
        lines.append(row.format("idle, 1 client every 2 s", "", "", **b["idle_c1"]))
        lines.append(row.format("idle, 8 clients back to back", "", "", **b["idle_c8"]))
        for p in b["pairs"]:
            lines.append(f"| backfill alone ({p['order']}) | {p['load_average']:.1f} | | | | | | | {p['alone']['series_per_s']:.2f} |")
            lines.append(row.format(f"during the backfill, 1 client every 2 s ({p['order']})", f"{p['load_average']:.1f}",
                                    f"{p['beside']['series_per_s']:.2f}", **p["during_c1"]))
        lines.append(row.format("during the backfill, 8 clients back to back", "",
                                f"{b['beside_c8']['backfill']['series_per_s']:.2f}", **b["beside_c8"]["during_c8"]))
        lines.append(row.format("GPU lock held by another process, 1 client every 2 s", "", "", **b["lock_held_c1"]))
        lines.append(f"with the GPU lock held elsewhere, on-demand answers ran on: {'; '.join(b['lock_held_devices'])}")
    for key, value in r["ratios"].items():
        target = TARGETS.get(key)
        met = "" if target is None else (
            f" (target {target[0]} {target[1]}: {'met' if (value >= target[1] if target[0] == '>=' else value < target[1]) else 'MISSED'})")
        lines.append(f"{key}: {value:.2f}{met}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
