"""Scoring at scale: ``forecast_scores_<cadence>`` over DAYS of stored forecasts, from scratch and incrementally.

The database holds DAYS of forecasts for the 23 instruments, from both models as they store them:
chronos-2 (p10/p50/p90, ``as_of`` set) and kronos-base (close only, ``as_of`` NULL), one per
instrument and bar close, on the sample source's own bar closes. Then the scoring asset runs,
materialised in-process on an ephemeral instance, each time in a fresh child process whose peak
RSS is its own (``resource.getrusage``):

1. from scratch (``rebuild``) against the bars closed one bar before the newest window, which
   scores the whole history;
2. incrementally, one bar later: the run after one new window, which scores the forecasts that
   window realised and reviews what is stored (summary, rolling chart, canaries).

    python benchmarks/scoring_scale.py [--days 365] [--cadence 1h] [--json FILE] [--refill] [--drop] [--smoke]

PostgreSQL: ``DATABASE_URL``'s server when set, else the benchmark's embedded server in
``benchmarks/.cache/pgdata``. The filled database (``scoring_scale_<cadence>_<days>d``) is kept and
reused by the next run with the same arguments, since filling a year of hourly forecasts takes
minutes; ``--refill`` fills it again, ``--drop`` drops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from forecasting_pipeline.market.cadences import CADENCES  # noqa: E402
from forecasting_pipeline.market.instruments import load_instruments  # noqa: E402
from forecasting_pipeline.market.sources.sample import sample_bars  # noqa: E402
from forecasting_pipeline.orchestration.partitions import cadence_windows  # noqa: E402
from forecasting_pipeline.storage.embedded_postgres import _with_database, database_environment  # noqa: E402
from forecasting_pipeline.storage.migrations import migrate  # noqa: E402

# The newest window scored: fixed, so runs on different days measure the same history.
END = {"1h": "2026-03-02-15:00", "1d": "2026-03-02"}
FILL_VERSION = 1
ROWS_PER_COPY = 2000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def server():
    """DATABASE_URL's server, or the benchmark's embedded one."""
    with database_environment(os.environ.get("DATABASE_URL"), pgdata=CACHE / "pgdata") as environment:
        yield environment["DATABASE_URL"]


def _steps_json(ts: list[str], p10: np.ndarray | None, p50: np.ndarray, p90: np.ndarray | None) -> str:
    if p10 is None:
        return "[" + ",".join(f'{{"ts":"{t}","close":{c!r}}}' for t, c in zip(ts, p50.tolist())) + "]"
    return "[" + ",".join(
        f'{{"step":{i},"ts":"{t}","p10":{a!r},"p50":{b!r},"p90":{c!r},"close":{b!r}}}'
        for i, (t, a, b, c) in enumerate(zip(ts, p10.tolist(), p50.tolist(), p90.tolist()), start=1)
    ) + "]"


def _instrument_lines(instrument, cadence: str, days: int, rng: np.random.Generator) -> list[str]:
    """COPY text lines of both models' forecasts for one instrument, one per bar close in the last DAYS."""
    spec = CADENCES[cadence]
    end = cadence_windows(spec).end_of(END[cadence])
    # Two weeks past the end hold the last forecasts' horizons on any calendar (they stay unrealised).
    bars_per_day = 24 if cadence == "1h" else 1
    bars = sample_bars(instrument, cadence, end + timedelta(days=14), (days + 14) * bars_per_day)
    bars = bars.filter(bars["ts"] > end - timedelta(days=days))
    instants = bars["ts"].to_list()
    ts = [t.isoformat() for t in instants]
    close = bars["close"].to_numpy()
    horizon, lines = spec.horizon, []
    band_shape = 0.01 * np.sqrt(np.arange(1, horizon + 1))
    for i in range(len(ts) - horizon):
        if instants[i] > end:
            break
        step_ts = ts[i + 1: i + 1 + horizon]
        p50 = close[i] * (1 + rng.normal(0, 0.002, horizon).cumsum())
        band = close[i] * band_shape
        kronos = p50 * (1 + rng.normal(0, 0.001, horizon))
        created = (datetime.fromisoformat(ts[i]) + timedelta(minutes=5)).isoformat()
        lines.append(f"{instrument.symbol}\t{cadence}\tchronos-2\tscale-test\t{ts[i]}\t{created}\t"
                     f"{_steps_json(step_ts, p50 - band, p50, p50 + band)}\n")
        lines.append(f"{instrument.symbol}\t{cadence}\tkronos-base\t\\N\t\\N\t{created}\t"
                     f"{_steps_json(step_ts, None, kronos, None)}\n")
    return lines


def fill(conn: psycopg.Connection, cadence: str, days: int) -> int:
    """Store both models' forecasts for every instrument; the rows written."""
    rng = np.random.default_rng(0)
    written = 0
    with conn.cursor() as cur, cur.copy(
        "COPY ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions) FROM STDIN"
    ) as copy:
        for instrument in load_instruments():
            lines = _instrument_lines(instrument, cadence, days, rng)
            for start in range(0, len(lines), ROWS_PER_COPY):
                copy.write("".join(lines[start: start + ROWS_PER_COPY]).encode())
            written += len(lines)
    conn.commit()
    return written


def database_name(cadence: str, days: int) -> str:
    return f"scoring_scale_{cadence}_{days}d"


def prepared_database(server_url: str, name: str, cadence: str, days: int, refill: bool) -> tuple[str, dict]:
    """The filled database ``name``'s URL, filling it when it is missing, stale or ``refill``; what was done."""
    url = _with_database(server_url, name)
    params = {"cadence": cadence, "days": days, "end": END[cadence], "version": FILL_VERSION}
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not refill:
        with psycopg.connect(url) as conn:
            marker = conn.execute("SELECT to_regclass('scoring_scale_fill')").fetchone()[0]
            stored = conn.execute("SELECT params FROM scoring_scale_fill").fetchone()[0] if marker else None
            if stored == params:
                conn.commit()
                migrate(conn)
                return url, {"reused_fill": True}
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        migrate(conn)
        rows = fill(conn, cadence, days)
        conn.execute("CREATE TABLE scoring_scale_fill (params jsonb)")
        conn.execute("INSERT INTO scoring_scale_fill VALUES (%s::jsonb)", (json.dumps(params),))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ml_predictions")
    return url, {"reused_fill": False, "fill_s": round(time.perf_counter() - started, 1), "rows_written": rows}


def child_run(cadence: str, until: str, rebuild: bool) -> None:
    """In this process: materialise the scoring asset once; print its wall time, peak RSS and what it did."""
    import dagster as dg

    from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource
    from forecasting_pipeline.orchestration.scoring_assets import build_scoring

    asset = f"forecast_scores_{cadence}"
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = dg.materialize(
            build_scoring(CADENCES[cadence]),
            instance=instance,
            resources={
                "database": PostgresResource(url=os.environ["DATABASE_URL"]),
                "instruments": InstrumentsResource(),
                "market_data": MarketDataResource(source="sample"),
            },
            run_config={"ops": {asset: {"config": {"until": until, "rebuild": rebuild}}}},
        )
        seconds = time.perf_counter() - started
    metadata = result.asset_materializations_for_node(asset)[0].metadata
    print(json.dumps({
        "ok": result.success,
        "run_seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "run": metadata["run"].value,
        "forecasts_scored_this_run": metadata["forecasts_scored_this_run"].value,
        "forecasts_scored": metadata["forecasts_scored"].value,
        "score_rows": metadata["rows"].value,
    }))


def in_child(url: str, cadence: str, until: datetime, rebuild: bool) -> dict:
    """Run ``child_run`` in a fresh interpreter; its report plus the process's whole wall time."""
    command = [sys.executable, __file__, "--child-run", "--cadence", cadence, "--until", until.isoformat()]
    started = time.perf_counter()
    done = subprocess.run(command + (["--rebuild"] if rebuild else []), env={**os.environ, "DATABASE_URL": url},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scoring child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_seconds"] = round(time.perf_counter() - started, 2)
    return report


def measure(url: str, cadence: str) -> dict:
    spec = CADENCES[cadence]
    end = cadence_windows(spec).end_of(END[cadence])
    with psycopg.connect(url) as conn:
        results = {
            "table_mb": round(conn.execute("SELECT pg_total_relation_size('ml_predictions')").fetchone()[0] / 2**20),
            "rows_per_model": dict(conn.execute(
                "SELECT model_name, count(*) FROM ml_predictions GROUP BY model_name ORDER BY 1").fetchall()),
        }
    results["load_before"] = round(os.getloadavg()[0], 2)
    scratch = in_child(url, cadence, end - spec.bar, rebuild=True)
    incremental = in_child(url, cadence, end, rebuild=False)
    results["load_after"] = round(os.getloadavg()[0], 2)
    results |= {
        "from_scratch_run_seconds": scratch["run_seconds"],
        "from_scratch_peak_rss_mb": scratch["peak_rss_mb"],
        "from_scratch": scratch,
        "incremental_run_seconds": incremental["run_seconds"],
        "incremental_process_seconds": incremental["process_seconds"],
        "incremental_peak_rss_mb": incremental["peak_rss_mb"],
        "incremental": incremental,
        "ratio_from_scratch_over_incremental_seconds": round(scratch["run_seconds"] / incremental["run_seconds"], 1),
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--cadence", choices=sorted(CADENCES), default="1h")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--refill", action="store_true", help="fill the database again even if a fill is kept")
    parser.add_argument("--drop", action="store_true", help="drop the filled database at the end")
    parser.add_argument("--smoke", action="store_true",
                        help="3 days in a database of its own, dropped at the end: checks that it runs, in seconds")
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--until", help=argparse.SUPPRESS)
    parser.add_argument("--rebuild", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_run:
        child_run(args.cadence, args.until, args.rebuild)
        return 0

    name = database_name(args.cadence, args.days)
    if args.smoke:
        args.days, args.drop = 3, True
        name = f"scoring_scale_smoke_{uuid.uuid4().hex[:10]}"
    results: dict = {"cadence": args.cadence, "days": args.days}
    with server() as server_url:
        try:
            url, prepared = prepared_database(server_url, name, args.cadence, args.days, args.refill)
            results |= prepared
            results |= measure(url, args.cadence)
        finally:
            if args.drop:
                with psycopg.connect(server_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
