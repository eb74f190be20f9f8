"""The ensemble on real daily GOOG: each weighting scheme's accuracy against its best member, and its cost beside the chain's.

Members as in ``forecasting_pipeline_tests/test_ensemble_real_bars.py``: ``chronos-2`` from one run of
the daily chain over the range on the random-weight tiny checkpoint (useless), ``baseline-rw-vol``,
and a Kronos stand-in written as Kronos writes its rows: the realised closes plus Gaussian noise of
NOISE times the naive scale times sqrt(step). NOISE 0.5 is skilful (about half a random walk's
error), 1.0 about as good as the random walk, 2.0 worse. For each NOISE and each scheme (``grid``,
``inverse``, ``sqrt-inverse``) the ensemble is computed over the whole range in one call, and its
forecasts and the members' are scored with ``scoring.losses.per_forecast_losses`` after the
warm-up (out of sample: every forecast used only forecasts realised by its own ``as_of``).

    python benchmarks/ensemble_schemes.py [--from 2011-07-01] [--to 2012-06-30] [--json FILE]

Prints, per NOISE and scheme: the ensemble's scaled MAE of p50 over the best member's (below 1:
better than the best member), its p10-p90 coverage, and the final location weights; then the
ensemble's time per window over the chain's, measured in the same run (the machine's load too).
PostgreSQL: ``DATABASE_URL``'s server when set, else an embedded one in ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from forecasting_pipeline.ensemble.weights import SCHEMES  # noqa: E402
from forecasting_pipeline.ensemble.window_ensembles import EnsembleParams, ensemble_windows  # noqa: E402
from forecasting_pipeline.forecasting.model import write_random_checkpoint  # noqa: E402
from forecasting_pipeline.market.cadences import DAILY  # noqa: E402
from forecasting_pipeline.market.instruments import Instrument  # noqa: E402
from forecasting_pipeline.market.sources import FileSource  # noqa: E402
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, build_chain  # noqa: E402
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager  # noqa: E402
from forecasting_pipeline.orchestration.partitions import cadence_windows  # noqa: E402
from forecasting_pipeline.orchestration.resources import (  # noqa: E402
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    PostgresResource,
)
from forecasting_pipeline.scoring.losses import per_forecast_losses  # noqa: E402
from forecasting_pipeline.storage.embedded_postgres import _with_database, database_environment  # noqa: E402
from forecasting_pipeline.storage.migrations import migrate  # noqa: E402
from forecasting_pipeline.storage.ml_predictions import read_predictions  # noqa: E402
from forecasting_pipeline_tests.conftest import BarFiles, _real_bars, skilful_kronos, write_kronos_rows  # noqa: E402

NOISES = (0.5, 1.0, 2.0)
MEMBERS = ("chronos-2", "kronos-base", "baseline-rw-vol")
GOOG = [Instrument("GOOG", "equity", "XNAS")]
SMALL_CONTEXT = {"ops": {"ohlcv_1d": {"config": {"history_bars": 256}},
                         "chronos2_forecasts_1d": {"config": {"context_length": 256}}}}


def chain_rows(url: str, root: Path, bars_root: Path, first: str, last: str) -> float:
    """Run the daily chain over the range on the tiny random checkpoint; its seconds."""
    universe = root / "instruments.yaml"
    universe.write_text('instruments:\n  - {symbol: GOOG, asset_class: equity, calendar: XNAS}\n')
    resources = {
        "database": PostgresResource(url=url), "instruments": InstrumentsResource(file=str(universe)),
        "market_data": MarketDataResource(source="files", path=str(bars_root)),
        "chronos2": Chronos2Resource(model=str(write_random_checkpoint(root / "tiny", "tiny")), device="cpu"),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=str(root / "frames")),
    }
    windows = cadence_windows(DAILY, "2004-01-01", 1000)
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = dg.materialize(build_chain(windows, ["GOOG"]), resources=resources, instance=instance,
                                run_config=SMALL_CONTEXT,
                                tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
    if not result.success:
        raise SystemExit("the chain run failed")
    return time.perf_counter() - started


def evaluate(ensemble: pl.DataFrame, stored: pl.DataFrame, bars: pl.DataFrame, since) -> dict[str, dict]:
    """Scaled MAE and coverage of the ensemble and each member on the forecasts they share from ``since``."""
    losses = per_forecast_losses(pl.concat([stored, ensemble]), bars)
    shared = losses.filter(pl.col("as_of") >= since).group_by("symbol", "as_of").len().filter(pl.col("len") >= 5)
    rows = losses.join(shared.select("symbol", "as_of"), on=["symbol", "as_of"]).group_by("model_name").agg(
        pl.len().alias("forecasts"), pl.col("scaled_abs_error").mean().alias("scaled_mae"),
        pl.when(pl.col("n_below_p10").null_count() == 0).then(
            1 - (pl.col("n_below_p10").sum() + pl.col("n_above_p90").sum()) / pl.col("n_steps").sum()
        ).alias("coverage"),
    )
    return {r["model_name"]: r for r in rows.iter_rows(named=True)}


def run(first: str, last: str) -> dict:
    bars = _real_bars("GOOG")
    windows = cadence_windows(DAILY, "2004-01-01", 1000)
    keys = windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
    sessions = bars.filter(pl.col("ts").dt.strftime("%Y-%m-%d").is_between(pl.lit(first), pl.lit(last)))["ts"].to_list()
    results: dict = {"range": [first, last], "windows": len(keys), "sessions": len(sessions), "runs": []}
    with tempfile.TemporaryDirectory() as scratch, \
            database_environment(os.environ.get("DATABASE_URL"), None, HERE / ".cache" / "pgdata_ensemble") as env:
        root = Path(scratch)
        name = f"ensemble_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(env["DATABASE_URL"], name)
        try:
            BarFiles(root / "bars").write("GOOG", bars)
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
                results["chain_seconds"] = chain_rows(url, root, root / "bars", first, last)
                results["runs"] = [one_noise(conn, root, bars, windows, keys, sessions, noise) for noise in NOISES]
        finally:
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    seconds = [r["seconds"] for noise in results["runs"] for r in noise["schemes"]]
    results["ensemble_over_chain_per_window"] = (sum(seconds) / len(seconds)) / results["chain_seconds"]
    return results


def one_noise(conn, root: Path, bars, windows, keys, sessions, noise: float) -> dict:
    conn.execute("DELETE FROM ml_predictions WHERE model_name = 'kronos-base'")
    write_kronos_rows(conn, skilful_kronos(bars, sessions, DAILY.horizon, noise=noise))
    kronos = read_predictions(conn, "1d", "kronos-base").with_columns(pl.col("created_at").alias("as_of"))
    stored = pl.concat([read_predictions(conn, "1d"), kronos.select(read_predictions(conn, "1d").columns)])
    stored = stored.select("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")
    out = {"noise": noise, "schemes": []}
    for scheme in SCHEMES:
        params = EnsembleParams(scheme=scheme)
        started = time.perf_counter()
        ensemble = ensemble_windows(conn, DAILY, FileSource(str(root / "bars")), GOOG, windows.ends(list(keys)), params)
        seconds = time.perf_counter() - started
        frame = pl.concat(ensemble.forecasts.values()).unique(["symbol", "as_of", "step"]).with_columns(
            pl.lit("ensemble").alias("model_name"))
        explained = sorted(ensemble.explanations.values(), key=lambda e: e.as_of)
        since = min(e.as_of for e in explained if not e.details["warm_up"])
        scores = evaluate(frame.select(stored.columns), stored, bars, since)
        best = min(MEMBERS, key=lambda m: scores[m]["scaled_mae"])
        out["schemes"].append({
            "scheme": scheme, "seconds": seconds, "best_member": best,
            "ensemble_over_best_mae": scores["ensemble"]["scaled_mae"] / scores[best]["scaled_mae"],
            "coverage": scores["ensemble"]["coverage"], "forecasts": scores["ensemble"]["forecasts"],
            "scaled_mae": {m: round(r["scaled_mae"], 4) for m, r in scores.items()},
            "final_location_weights": {m: w["location"] for m, w in explained[-1].weights.items()},
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="first", default="2011-07-01")
    parser.add_argument("--to", dest="last", default="2012-06-30")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="two months (2012-05..06): checks that it runs, quickly")
    args = parser.parse_args()
    if args.smoke:
        args.first, args.last = "2012-05-01", "2012-06-30"
    results = run(args.first, args.last)
    results["load_average"] = os.getloadavg()
    print(f"GOOG daily {args.first}..{args.last}: {results['windows']} windows, {results['sessions']} sessions")
    for noise in results["runs"]:
        for r in noise["schemes"]:
            print(f"  Kronos noise {noise['noise']:.1f}  {r['scheme']:12s}  ensemble/best({r['best_member']}) scaled MAE "
                  f"{r['ensemble_over_best_mae']:.3f}  coverage {r['coverage']:.3f}  ({r['forecasts']} forecasts)  "
                  f"final location weights {r['final_location_weights']}")
    print(f"ensemble time per window / chain time per window: {results['ensemble_over_chain_per_window']:.3f} "
          f"(load average {results['load_average'][0]:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
