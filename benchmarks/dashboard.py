"""What one dashboard refresh costs: each read it makes, on a database the size of a year of hourly rows.

Fills a fresh database with ``--rows`` ``ml_predictions`` rows over the default universe's 23
symbols, both timeframes and four models (``kronos-base`` with ``as_of`` NULL as Kronos writes,
``chronos-2``, ``ensemble`` and a challenger), a scored history of ``--dates`` hourly forecast dates
per symbol for five models (``forecast_losses``) and the ensemble's weights at each of them
(``ensemble_weights``). Then it times, in the same run:

* the model catalog's SQL (one index probe per series) against the plain ``GROUP BY`` over every
  row that it replaces, as a ratio;
* ``--requests`` rounds of the reads one page refresh makes for one hourly instrument and model,
  through ``forecasting-pipeline serve`` on loopback (sample bars; the tiny checkpoint: the model
  plays no part in a read), reporting each endpoint's median and the sum of the medians.

    python benchmarks/dashboard.py [--rows 200000] [--dates 2160] [--requests 20] [--json FILE] [--smoke]

``--smoke``: 5,000 rows, 100 dates, 3 rounds (seconds). PostgreSQL: ``DATABASE_URL`` when set,
else the benchmarks' embedded server; the database is fresh and dropped afterwards.
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
sys.path[:0] = [str(REPO), str(HERE)]
CACHE = HERE / ".cache"

from forecasting_pipeline.forecasting.model import write_random_checkpoint  # noqa: E402
from forecasting_pipeline.market.instruments import load_instruments  # noqa: E402
from forecasting_pipeline.serving.model_catalog import stored_series  # noqa: E402
from forecasting_pipeline.storage.embedded_postgres import _with_database, embedded_server  # noqa: E402
from forecasting_pipeline.storage.migrations import migrate  # noqa: E402
from forecasting_pipeline_tests.conftest import start_service, stop_service  # noqa: E402
from showcase import _same  # noqa: E402

SYMBOLS = [i.symbol for i in load_instruments()]
MODELS = ["kronos-base", "chronos-2", "ensemble", "chronos-2-ft-demo"]
SCORED = ["kronos-base", "chronos-2", "ensemble", "baseline-random-walk", "baseline-rw-vol"]
VIEW = {"symbol": "AAPL", "timeframe": "1h"}
READS = {
    "models": ("/showcase/models", {}),
    "bars": ("/showcase/bars", {**VIEW, "limit": 90}),
    "latest": ("/showcase/ml-prediction", {**VIEW, "model": "chronos-2"}),
    "scores": ("/showcase/scores", VIEW),
    "past-forecasts": ("/showcase/past-forecasts", {**VIEW, "model": "chronos-2", "origins": 5}),
    "rolling-scores": ("/showcase/rolling-scores", VIEW),
    "ensemble-weights": ("/showcase/ensemble-weights", VIEW),
}
NAIVE_SERIES = """
SELECT model_name, timeframe, symbol, max(COALESCE(as_of, created_at)) FROM ml_predictions
GROUP BY model_name, timeframe, symbol ORDER BY model_name, timeframe, symbol
"""

FILL_ROWS = """
INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions)
SELECT (%(symbols)s::text[])[1 + g %% 23], CASE WHEN (g / 23) %% 2 = 0 THEN '1h' ELSE '1d' END,
       (%(models)s::text[])[1 + (g / 46) %% 4], 'v',
       CASE WHEN (g / 46) %% 4 = 0 THEN NULL ELSE timestamptz '2026-01-01' + g * interval '1 minute' END,
       timestamptz '2026-01-01' + g * interval '1 minute' + interval '5 minutes',
       (SELECT jsonb_agg(jsonb_build_object('step', s, 'ts', (timestamptz '2026-01-01' + (g + s * 60) * interval '1 minute'),
                                            'p10', 99.0, 'p50', 100.0, 'p90', 101.0, 'close', 100.0))
          FROM generate_series(1, 24) AS s)
FROM generate_series(1, %(rows)s) AS g
"""
FILL_LOSSES = """
INSERT INTO forecast_losses (timeframe, model_name, symbol, as_of, levels, realised_at, n_steps, mean_pinball,
                             scaled_abs_error, scaled_rw_abs_error, n_below_p10, n_above_p90)
SELECT '1h', m, s, timestamptz '2026-01-01' + d * interval '1 hour', CASE WHEN m IN ('kronos-base', 'baseline-random-walk') THEN 1 ELSE 3 END,
       timestamptz '2026-01-02' + d * interval '1 hour', 24, 0.4 + random() * 0.2, 0.8 + random() * 0.4, 1.0,
       CASE WHEN m IN ('kronos-base', 'baseline-random-walk') THEN NULL ELSE (random() * 4)::int END,
       CASE WHEN m IN ('kronos-base', 'baseline-random-walk') THEN NULL ELSE (random() * 4)::int END
FROM unnest(%(scored)s::text[]) AS m, unnest(%(symbols)s::text[]) AS s, generate_series(1, %(dates)s) AS d
"""
FILL_WEIGHTS = """
INSERT INTO ensemble_weights (timeframe, symbol, as_of, model_version, weights, missing, details)
SELECT '1h', s, timestamptz '2026-01-01' + d * interval '1 hour', 'ensemble-v1',
       jsonb_build_object('chronos-2', jsonb_build_object('location', 0.2, 'band', 0.3),
                          'kronos-base', jsonb_build_object('location', 0.5, 'band', NULL),
                          'baseline-rw-vol', jsonb_build_object('location', 0.3, 'band', 0.7)),
       '{}'::jsonb, jsonb_build_object('warm_up', d < 20, 'scored_forecasts', d, 'own_share', 0.5)
FROM unnest(%(symbols)s::text[]) AS s, generate_series(1, %(dates)s) AS d
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dates", type=int, default=2160, help="scored hourly forecast dates per symbol (90 days)")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="5,000 rows, 100 dates, 3 rounds")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.dates, args.requests = 5000, 100, 3
    checkpoint = CACHE / "chronos2-tiny-random"
    if not (checkpoint / "config.json").exists():
        write_random_checkpoint(checkpoint, "tiny")
    given = os.environ.get("DATABASE_URL")
    with (embedded_server(CACHE / "pgdata") if not given else _same(given)) as server_url:
        name = f"dashboard_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            results = measure(_with_database(server_url, name), checkpoint, args)
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def measure(url: str, checkpoint: Path, args: argparse.Namespace) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        started = time.perf_counter()
        conn.execute(FILL_ROWS, {"symbols": SYMBOLS, "models": MODELS, "rows": args.rows})
        conn.execute(FILL_LOSSES, {"scored": SCORED, "symbols": SYMBOLS, "dates": args.dates})
        conn.execute(FILL_WEIGHTS, {"symbols": SYMBOLS, "dates": args.dates})
        for table in ("ml_predictions", "forecast_losses", "ensemble_weights"):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        fill_s = time.perf_counter() - started
        catalog_ms = _timed(lambda: stored_series(conn), args.requests)
        naive_ms = _timed(lambda: conn.execute(NAIVE_SERIES).fetchall(), args.requests)
    service = start_service(url, checkpoint, Path(tempfile.mkdtemp()) / "service.log", {"PREDICT_API_TOKEN": ""})
    try:
        for path, query in READS.values():  # warm the pool's connections and the plans
            _get(service.url, path, query)
        load_start = os.getloadavg()[0]
        times = {name: [] for name in READS}
        sizes = {}
        for _ in range(args.requests):
            for name, (path, query) in READS.items():
                seconds, sizes[name] = _get(service.url, path, query)
                times[name].append(1000 * seconds)
    finally:
        stop_service(service)
    medians = {name: round(statistics.median(t), 2) for name, t in times.items()}
    return {
        "rows": args.rows, "scored_dates_per_symbol": args.dates, "requests": args.requests, "fill_s": round(fill_s, 2),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "catalog_sql_p50_ms": round(statistics.median(catalog_ms), 2),
        "group_by_sql_p50_ms": round(statistics.median(naive_ms), 2),
        "group_by_over_catalog": round(statistics.median(naive_ms) / statistics.median(catalog_ms), 1),
        "http_p50_ms": medians, "refresh_sum_of_p50_ms": round(sum(medians.values()), 1), "answer_bytes": sizes,
    }


def _timed(read, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        read()
        times.append(1000 * (time.perf_counter() - started))
    return times


def _get(base: str, path: str, query: dict) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"{base}{path}?{urlencode(query)}", timeout=60) as answer:
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status}: {body[:200]!r}")
    return time.perf_counter() - started, len(body)


if __name__ == "__main__":
    sys.exit(main())
