"""One window's read from the PostgreSQL bar source: a table holding ten years of hourly bars against one year.

Two bar tables in a scratch database hold the same instruments' hourly bars, one over the last
year and one over the last ten years, each with the index a bar table should have, (symbol,
timeframe, ts). The source (``TableSource``: index-ordered reads per symbol, pooled connections)
reads one hourly window, the chain's context of bars per instrument, from each table, REPEATS
times, alternating between the tables so that the machine's load falls on both alike; the median
counts. Beside it, the query the source used before (a window function over
each symbol's whole history, on a new connection per read) reads the same window, for reference.

    python benchmarks/bar_reads.py [--smoke] [--symbols 23] [--context 2048] [--repeats 15] [--json FILE]

It prints the milliseconds per read and the ratio ten years / one year for both: the source's
ratio should stay near 1 (the target is 1.5 at most), the old query's grows with the history.
``--smoke``: 3 instruments, a 256-bar context, 3 repeats, in seconds. PostgreSQL:
``DATABASE_URL``'s server when set, else an embedded one; the scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.postgres import BarTable, TableSource
from forecasting_pipeline.storage.database import close_pools, connect
from forecasting_pipeline.storage.embedded_postgres import _with_database, database_environment

# The window read: the last bar of 2025; the tables end there.
END = datetime(2026, 1, 1, tzinfo=timezone.utc)
HOURS_PER_YEAR = 8760

_CREATE = """
CREATE TABLE {table} (
    symbol text NOT NULL, timeframe text NOT NULL, ts timestamptz NOT NULL,
    open double precision, high double precision, low double precision, close double precision, volume double precision
)
"""
# Every symbol's bar of each hour up to END, oldest hour first: the order a live table is appended in.
_FILL = """
INSERT INTO {table}
SELECT s.symbol, '1h', %(end)s - make_interval(hours => h.n),
       100 + 10 * sin(h.n / 50.0 + s.k), 101 + 10 * sin(h.n / 50.0 + s.k), 99 + 10 * sin(h.n / 50.0 + s.k),
       100 + 10 * sin(h.n / 50.0 + s.k), 1000 + h.n %% 97
FROM unnest(%(symbols)s::text[]) WITH ORDINALITY AS s(symbol, k), generate_series(0, %(hours)s - 1) AS h(n)
ORDER BY h.n DESC, s.k
"""

# The query the source ran before: numbers every bar of each symbol's history, then keeps the newest.
_WHOLE_HISTORY = """
SELECT symbol, ts, open, high, low, close, volume FROM (
    SELECT symbol, ts, open, high, low, close, volume,
           row_number() OVER (PARTITION BY symbol, ts <= %(end)s ORDER BY ts DESC) AS rn
    FROM {table} WHERE symbol = ANY(%(symbols)s) AND ts <= %(end)s AND timeframe = '1h'
) recent WHERE ts > %(end)s OR rn <= %(n)s ORDER BY symbol, ts
"""


def fill(url: str, table: str, symbols: list[str], years: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(_CREATE).format(table=sql.Identifier(table)))
        conn.execute(sql.SQL(_FILL).format(table=sql.Identifier(table)),
                     {"end": END, "symbols": symbols, "hours": years * HOURS_PER_YEAR})
        conn.execute(sql.SQL("CREATE INDEX ON {} (symbol, timeframe, ts)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]


def timed_pair(one, ten, repeats: int) -> tuple[float, float, int, int]:
    """Median milliseconds of ``one()`` and of ``ten()``, read alternately ``repeats`` times each after a
    warm-up (so that the machine's load falls on both alike), and the rows each returned."""
    rows = one(), ten()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for read, out in ((one, times[0]), (ten, times[1])):
            started = time.perf_counter()
            read()
            out.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[0]), statistics.median(times[1]), *rows


def measure(url: str, symbols: list[str], context: int, repeats: int) -> dict:
    instruments = [Instrument(s, "crypto", "24/7") for s in symbols]
    out: dict = {"symbols": len(symbols), "context": context, "repeats": repeats, "tables": {}}
    tables = {years: f"bars_{years}y" for years in (1, 10)}
    for years, table in tables.items():
        out["tables"][table] = {"bars_per_symbol": years * HOURS_PER_YEAR, "rows": fill(url, table, symbols, years)}

    def source_read(table: str):
        source = TableSource(url, BarTable(table=table))
        return lambda: source.bars(instruments, "1h", END, context)[0].height

    def whole_history_read(table: str):
        query = sql.SQL(_WHOLE_HISTORY).format(table=sql.Identifier(table))

        def read() -> int:
            with connect(url) as conn:
                return len(conn.execute(query, {"end": END, "symbols": symbols, "n": context}).fetchall())
        return read

    for name, reader in (("source", source_read), ("whole_history", whole_history_read)):
        one_ms, ten_ms, one_rows, ten_rows = timed_pair(reader(tables[1]), reader(tables[10]), repeats)
        if {one_rows, ten_rows} != {len(symbols) * context}:
            raise SystemExit(f"{name}: read {one_rows} and {ten_rows} rows, expected {len(symbols) * context}")
        out["tables"][tables[1]][f"{name}_ms"] = round(one_ms, 2)
        out["tables"][tables[10]][f"{name}_ms"] = round(ten_ms, 2)
        out[f"{name}_ratio_10y_1y"] = round(ten_ms / one_ms, 2)
    return out


def report(result: dict) -> str:
    lines = [f"one hourly window: {result['symbols']} instruments x {result['context']} bars, "
             f"median of {result['repeats']} reads",
             f"{'table':<10} {'bars/symbol':>11} {'rows':>10} {'source ms':>10} {'whole-history ms':>17}"]
    for table, t in result["tables"].items():
        lines.append(f"{table:<10} {t['bars_per_symbol']:>11} {t['rows']:>10} {t['source_ms']:>10.2f} "
                     f"{t['whole_history_ms']:>17.2f}")
    lines.append(f"ratio 10y/1y: source {result['source_ratio_10y_1y']:.2f} (target <= 1.5), "
                 f"whole-history query {result['whole_history_ratio_10y_1y']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="3 instruments, 256-bar context, 3 repeats")
    parser.add_argument("--symbols", type=int, default=23)
    parser.add_argument("--context", type=int, default=2048, help="bars per instrument the window reads")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    n_symbols, context, repeats = (3, 256, 3) if args.smoke else (args.symbols, args.context, args.repeats)
    symbols = [f"SYM{i:02d}" for i in range(n_symbols)]
    with database_environment(os.environ.get("DATABASE_URL")) as env:
        server = env["DATABASE_URL"]
        name = f"bar_reads_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            result = measure(_with_database(server, name), symbols, context, repeats)
        finally:
            close_pools()
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
