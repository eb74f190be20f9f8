"""Scoring at scale: ``forecast_scores_<cadence>`` over many days of stored forecasts.

The scoring asset rereads every stored forecast of its cadence on each run, so its cost grows
with history. This fills a fresh database with DAYS of forecasts for the 23 instruments, from
both models as they store them: chronos-2 (p10/p50/p90, ``as_of`` set) and kronos-base (close
only, ``as_of`` NULL). The forecasts sit on the sample source's own bar closes. Then, in this
one process, it measures:
- reading the stored forecasts back (``evaluation.read_all_forecasts``);
- the whole asset, materialised in-process on an ephemeral instance;
- the peak RSS of each.

    python benchmarks/scoring_scale.py [--days 30] [--cadence 1h] [--lookback-days 0] [--json FILE]

PostgreSQL: ``DATABASE_URL`` when set, else the benchmark's embedded server; the database is
fresh and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.market.instruments import load_instruments  # noqa: E402
from forecasting_pipeline.market.sources.sample import sample_bars  # noqa: E402
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource  # noqa: E402
from forecasting_pipeline.orchestration.scoring_assets import build_scoring  # noqa: E402
from forecasting_pipeline.scoring.evaluation import read_all_forecasts  # noqa: E402

# The newest window scored: fixed, so runs on different days measure the same history.
END = {"1h": "2026-03-02-15:00", "1d": "2026-03-02"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(conn: psycopg.Connection, cadence: str, days: int) -> dict[str, int]:
    """Store one forecast per instrument and bar close in the last DAYS, for both models; rows per model."""
    spec = CADENCES[cadence]
    end = cadence_windows(spec).end_of(END[cadence])
    bars_per_day = 24 if cadence == "1h" else 1
    horizon = spec.horizon
    rng = np.random.default_rng(0)
    counts = {"chronos-2": 0, "kronos-base": 0}
    with conn.cursor().copy(
        "COPY ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions) FROM STDIN"
    ) as copy:
        for instrument in load_instruments():
            bars = sample_bars(instrument, cadence, end, days * bars_per_day + horizon)
            ts, close = bars["ts"].to_list(), bars["close"].to_numpy()
            for i in range(len(ts) - horizon):
                as_of, level = ts[i], close[i]
                step_ts = [t.isoformat() for t in ts[i + 1 : i + 1 + horizon]]
                p50 = level * (1 + rng.normal(0, 0.002, horizon).cumsum())
                band = level * 0.01 * np.sqrt(np.arange(1, horizon + 1))
                chronos = [{"ts": t, "p10": a - b, "p50": a, "p90": a + b} for t, a, b in zip(step_ts, p50, band)]
                kronos = [{"ts": t, "close": a} for t, a in zip(step_ts, p50 * (1 + rng.normal(0, 0.001, horizon)))]
                created = as_of + timedelta(minutes=5)
                copy.write_row((instrument.symbol, cadence, "chronos-2", "scale-test", as_of, created, json.dumps(chronos)))
                copy.write_row((instrument.symbol, cadence, "kronos-base", None, None, created, json.dumps(kronos)))
                counts["chronos-2"] += 1
                counts["kronos-base"] += 1
    conn.commit()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--cadence", choices=sorted(CADENCES), default="1h")
    parser.add_argument("--lookback-days", type=int, default=0,
                        help="the asset's lookback_days (default 0: score every stored forecast)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from run import database  # the benchmark's fresh-database helper

    c = args.cadence
    results: dict = {"cadence": c, "days": args.days, "lookback_days": args.lookback_days}
    with database() as url:
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            results["rows_per_model"] = fill(conn, c, args.days)
            results["fill_s"] = time.perf_counter() - t
            size = conn.execute("SELECT pg_total_relation_size('ml_predictions')").fetchone()[0]
            results["table_mb"] = size / 2**20
        rss_before = peak_rss_mb()
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            stored = read_all_forecasts(conn, c)
            results["read_s"] = time.perf_counter() - t
        results["long_rows"] = stored.height
        results["read_peak_rss_mb"] = peak_rss_mb()
        results["rss_before_read_mb"] = rss_before
        del stored

        end = cadence_windows(CADENCES[c]).end_of(END[c])
        t = time.perf_counter()
        with dg.instance_for_test() as instance:
            run = dg.materialize(
                build_scoring(CADENCES[c]),
                instance=instance,
                resources={
                    "database": PostgresResource(url=url),
                    "instruments": InstrumentsResource(),
                    "market_data": MarketDataResource(source="sample"),
                },
                run_config={"ops": {f"forecast_scores_{c}": {
                    "config": {"until": end.isoformat(), "lookback_days": args.lookback_days},
                }}},
            )
        results["scoring_s"] = time.perf_counter() - t
        results["scoring_ok"] = run.success
        results["peak_rss_mb"] = peak_rss_mb()
        scored = run.asset_materializations_for_node(f"forecast_scores_{c}")[0].metadata["forecasts_scored"].value
        results["forecasts_scored"] = scored

    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
