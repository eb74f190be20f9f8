"""The gateway endpoint's latency: 100 sequential ``GET /showcase/ml-prediction`` on 100,000 stored rows.

Fills a fresh database with 100,000 ``ml_predictions`` rows (23 symbols x 2 timeframes x 2 models,
Kronos rows with ``as_of`` NULL, as production has them; the shape test_gateway.py seeds), starts
``forecasting-pipeline serve`` on loopback (the tiny checkpoint: the model plays no part in a read),
and sends the requests one after another, cycling through four query shapes: no parameters (the
gateway's default), a model and timeframe, a model, timeframe and symbol, and a symbol alone.
Reports p50/p95/max and, for comparison, the SQL function's own time for the same calls.

    python benchmarks/showcase.py [--requests 100] [--rows 100000] [--json FILE] [--smoke]

PostgreSQL: ``DATABASE_URL`` when set, else the benchmarks' embedded server; the database is
fresh and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
CACHE = HERE / ".cache"

from forecasting_pipeline.forecasting.model import write_random_checkpoint  # noqa: E402
from forecasting_pipeline.storage.embedded_postgres import _with_database, embedded_server  # noqa: E402
from forecasting_pipeline.storage.migrations import migrate  # noqa: E402
from forecasting_pipeline_tests.conftest import start_service, stop_service  # noqa: E402

QUERIES = [{}, {"model": "chronos-2", "timeframe": "1d"}, {"model": "chronos-2", "timeframe": "1h", "symbol": "S07"},
           {"symbol": "S11"}]

FILL = """
INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions)
SELECT 'S' || lpad((g %% 23)::text, 2, '0'),
       CASE WHEN (g / 23) %% 2 = 0 THEN '1h' ELSE '1d' END,
       CASE WHEN g %% 3 = 0 THEN 'kronos-base' ELSE 'chronos-2' END,
       'v',
       CASE WHEN g %% 3 = 0 THEN NULL ELSE timestamptz '2026-01-01' + g * interval '1 minute' END,
       timestamptz '2026-01-01' + g * interval '1 minute' + interval '5 minutes',
       (SELECT jsonb_agg(jsonb_build_object('step', s, 'ts', (timestamptz '2026-01-01' + (g + s * 60) * interval '1 minute'),
                                            'p10', 99.0, 'p50', 100.0, 'p90', 101.0, 'close', 100.0))
          FROM generate_series(1, 24) AS s)
FROM generate_series(1, %s) AS g
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-len(ordered) * q // 100)) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="2,000 rows and 8 requests: checks that it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.requests = 2000, 8
    checkpoint = CACHE / "chronos2-tiny-random"
    if not (checkpoint / "config.json").exists():
        write_random_checkpoint(checkpoint, "tiny")
    given = os.environ.get("DATABASE_URL")
    with (embedded_server(CACHE / "pgdata") if not given else _same(given)) as server_url:
        name = f"showcase_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(server_url, name)
        try:
            results = measure(url, checkpoint, args.rows, args.requests)
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def measure(url: str, checkpoint: Path, rows: int, requests: int) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        started = time.perf_counter()
        conn.execute(FILL, (rows,))
        conn.execute("ANALYZE ml_predictions")
        fill_s = time.perf_counter() - started
        sql_ms = _sql_times(conn, requests)
    service = start_service(url, checkpoint, Path(tempfile.mkdtemp()) / "service.log", {"PREDICT_API_TOKEN": ""})
    try:
        for query in QUERIES:  # warm the pool's connections and the plans
            _get(service.url, query)
        latencies, sizes = [], []
        load_start = os.getloadavg()[0]
        for i in range(requests):
            seconds, size = _get(service.url, QUERIES[i % len(QUERIES)])
            latencies.append(seconds)
            sizes.append(size)
    finally:
        stop_service(service)
    return {
        "rows": rows, "requests": requests, "fill_s": round(fill_s, 2), "load_average": [load_start, os.getloadavg()[0]],
        "http_p50_ms": 1000 * statistics.median(latencies), "http_p95_ms": 1000 * percentile(latencies, 95),
        "http_max_ms": 1000 * max(latencies), "sql_p50_ms": statistics.median(sql_ms), "sql_p95_ms": percentile(sql_ms, 95),
        "answer_bytes_by_query": {json.dumps(q): s for q, s in zip(QUERIES, sizes)},
    }


def _get(base: str, query: dict) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{base}/showcase/ml-prediction?{urlencode(query)}", timeout=30) as answer:
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {body[:200]!r}")
    return time.perf_counter() - started, len(body)


def _sql_times(conn: psycopg.Connection, requests: int) -> list[float]:
    times = []
    for i in range(requests):
        q = QUERIES[i % len(QUERIES)]
        started = time.perf_counter()
        conn.execute("SELECT * FROM latest_ml_predictions(%s, %s, %s)",
                     (q.get("model", "kronos-base"), q.get("timeframe"), q.get("symbol"))).fetchall()
        times.append(1000 * (time.perf_counter() - started))
    return times


class _same:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
