"""The ensemble on real daily bars: its weighting schemes, and its band's calibration across regimes.

Two parts (``--part``, both by default).

**schemes** (daily GOOG, ``--from``/``--to``, July 2011 to June 2012). Members as in
``forecasting_pipeline_tests/test_ensemble_real_bars.py``: ``chronos-2`` from one run of the daily
chain over the range on the random-weight tiny checkpoint (useless), ``baseline-rw-vol``, and a
Kronos stand-in written as Kronos writes its rows: the realised closes plus Gaussian noise of NOISE
times the naive scale times sqrt(step). NOISE 0.5 is skilful (about half a random walk's error),
1.0 about as good as the random walk, 2.0 worse. For each NOISE and each scheme (``grid``,
``inverse``, ``sqrt-inverse``) the ensemble is computed over the whole range in one call, and its
forecasts and the members' are scored with ``scoring.losses.per_forecast_losses`` after the
warm-up (out of sample: every forecast used only forecasts realised by its own ``as_of``). Prints
the ensemble's scaled MAE of p50 over the best member's, its p10-p90 coverage and the final
location weights; then the ensemble's time per window over the chain's, measured in the same run.

**band** (several years with volatile stretches). The ensemble with the band's former calibration
(``recent``) and the current one (``adaptive``), on the same members in the same run, over:

* ``GOOG 2005-2013``: daily GOOG (backtesting 0.6.6's real NASDAQ OHLCV, 2004-08 to 2013-03),
  scored from July 2006: 2008 and 2011 inside;
* ``S&P 500 2015-2022``: the S&P 500 index and JPM, XOM and AAPL (skfolio 1.12.2's real daily
  closes, adjusted, 1990 to 2022, New York sessions), scored from 2017: 2018's fourth quarter,
  2020 and 2022 inside. Its data is read from the package's file without importing it:
  ``pip install --no-deps skfolio==1.12.2``.

Members at every session: ``chronos-2`` is the real pipeline on the random-weight tiny checkpoint,
fed the closes alone (context 128; useless, with a far too narrow band); ``baseline-rw-vol`` is
scoring's random walk with the volatility band; ``kronos-base`` is a point forecast written as
Kronos writes its rows, the realised closes plus Gaussian noise of NOISE (0.5) times the mean
absolute one-bar change over its own horizon times sqrt(step). Its errors thus grow with the
market's moves as a real forecaster's do; a stand-in whose noise followed the trailing volatility
would get relatively better in every crash and flatter the band. Prints, per data set and scheme,
p10-p90 coverage per quarter (by ``as_of``) and per step, and the scaled MAE of p50 of the
adaptive scheme over the recent one's.

    python benchmarks/ensemble_schemes.py [--part schemes|band|all] [--from 2011-07-01] [--to 2012-06-30] [--json FILE]
    python benchmarks/ensemble_schemes.py --smoke   # band part only: GOOG, half a year of 2008, short windows; seconds

PostgreSQL: ``DATABASE_URL``'s server when set, else an embedded one in ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import dagster as dg  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from forecasting_pipeline.ensemble.calibration import BAND_SCHEMES  # noqa: E402
from forecasting_pipeline.ensemble.weights import SCHEMES  # noqa: E402
from forecasting_pipeline.ensemble.window_ensembles import EnsembleParams, ensemble_windows  # noqa: E402
from forecasting_pipeline.forecasting.model import load_chronos2, write_random_checkpoint  # noqa: E402
from forecasting_pipeline.forecasting.predict import predict_quantiles  # noqa: E402
from forecasting_pipeline.market.cadences import DAILY  # noqa: E402
from forecasting_pipeline.market.calendars import bar_closes  # noqa: E402
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
from forecasting_pipeline.scoring.losses import per_forecast_losses, realised_outcomes, step_losses  # noqa: E402
from forecasting_pipeline.storage.embedded_postgres import _with_database, database_environment  # noqa: E402
from forecasting_pipeline.storage.migrations import migrate  # noqa: E402
from forecasting_pipeline.storage.ml_predictions import prediction_rows, read_predictions, upsert_window  # noqa: E402
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


@contextlib.contextmanager
def scratch_database() -> Iterator[tuple[str, Path]]:
    """A fresh migrated database on the benchmark's server and a scratch folder, both gone afterwards."""
    with tempfile.TemporaryDirectory() as scratch, \
            database_environment(os.environ.get("DATABASE_URL"), None, HERE / ".cache" / "pgdata_ensemble") as env:
        name = f"ensemble_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(env["DATABASE_URL"], name)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn)
            yield url, Path(scratch)
        finally:
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_schemes(first: str, last: str) -> dict:
    bars = _real_bars("GOOG")
    windows = cadence_windows(DAILY, "2004-01-01", 1000)
    keys = windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first, last))
    sessions = bars.filter(pl.col("ts").dt.strftime("%Y-%m-%d").is_between(pl.lit(first), pl.lit(last)))["ts"].to_list()
    results: dict = {"range": [first, last], "windows": len(keys), "sessions": len(sessions), "runs": []}
    with scratch_database() as (url, root):
        BarFiles(root / "bars").write("GOOG", bars)
        with psycopg.connect(url, autocommit=True) as conn:
            results["chain_seconds"] = chain_rows(url, root, root / "bars", first, last)
            results["runs"] = [one_noise(conn, root, bars, windows, keys, sessions, noise) for noise in NOISES]
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


# ---------------------------------------------------------------------------
# the band part


KRONOS_NOISE = 0.5
CHRONOS_CONTEXT = 128
SKFOLIO_SYMBOLS = ("JPM", "XOM", "AAPL")


@dataclasses.dataclass(frozen=True)
class DataSet:
    """Instruments and their closes; members forecast from ``members_from``, scored from ``scored_from`` to ``to``."""

    name: str
    instruments: list[Instrument]
    bars: pl.DataFrame
    members_from: str
    scored_from: str
    to: str


def goog_set(smoke: bool) -> DataSet:
    bars = _real_bars("GOOG").select("symbol", "ts", "close")
    if smoke:
        return DataSet("GOOG 2008 (smoke)", GOOG, bars, "2007-06-01", "2008-01-01", "2008-06-30")
    return DataSet("GOOG 2005-2013", GOOG, bars, "2005-01-03", "2006-07-01", "2013-02-14")


def skfolio_set() -> DataSet:
    """The S&P 500 index and three of its stocks: skfolio's real daily closes, on New York's sessions."""
    spec = importlib.util.find_spec("skfolio")
    if spec is None:
        raise SystemExit("the band part reads skfolio's data file: pip install --no-deps skfolio==1.12.2")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    wide = pl.read_csv(folder / "sp500_index.csv.gz").join(
        pl.read_csv(folder / "sp500_dataset.csv.gz").select("Date", *SKFOLIO_SYMBOLS), on="Date")
    # The exchange calendars cover sessions from 2000; six years of history before 2017 are plenty.
    wide = wide.filter(pl.col("Date") >= "2010-01-01")
    closes = pl.Series("ts", bar_closes("XNYS", "1d", datetime(2010, 1, 1, tzinfo=timezone.utc),
                                        datetime(2023, 1, 1, tzinfo=timezone.utc)))
    sessions = pl.DataFrame({"Date": closes.dt.strftime("%Y-%m-%d"), "ts": closes})
    dated = wide.join(sessions, on="Date", how="inner")
    if dated.height != wide.height:
        raise SystemExit(f"{wide.height - dated.height} skfolio dates are not New York sessions")
    bars = dated.drop("Date").rename({"SP500": "SPX"}).unpivot(index="ts", variable_name="symbol", value_name="close")
    instruments = [Instrument(s, "equity", "XNYS") for s in ("SPX", *SKFOLIO_SYMBOLS)]
    return DataSet("S&P 500 2015-2022", instruments, bars.select("symbol", "ts", pl.col("close").cast(pl.Float64)),
                   "2015-01-02", "2017-01-01", "2022-12-20")


class ClosesSource:
    """Real closes served from memory: the market-data boundary for a data set that ships closes only."""

    is_synthetic = False

    def __init__(self, bars: pl.DataFrame) -> None:
        self.by_symbol = {s: f.sort("ts") for (s,), f in bars.partition_by("symbol", as_dict=True).items()}

    def describe(self) -> str:
        return "closes in memory"

    def bars(self, instruments, cadence: str, end: datetime, n_bars: int) -> tuple[pl.DataFrame, dict[str, str]]:
        known = [i for i in instruments if i.symbol in self.by_symbol]
        frames = [self.by_symbol[i.symbol].filter(pl.col("ts") <= end).tail(n_bars) for i in known]
        return pl.concat(frames), {i.symbol: "no closes" for i in instruments if i not in known}


def horizons(data: DataSet) -> dict[str, tuple[list[datetime], np.ndarray, np.ndarray]]:
    """Per instrument: its origins (every session in the members' range), each one's next H closes, and the closes
    realised at the origin and those H closes, shape (n, H + 1) (NaN where a session has no bar)."""
    out = {}
    first, last = (datetime.fromisoformat(d).replace(tzinfo=timezone.utc) for d in (data.members_from, data.to))
    for instrument in data.instruments:
        mine = data.bars.filter(pl.col("symbol") == instrument.symbol).sort("ts")
        calendar = bar_closes(instrument.calendar, "1d", mine["ts"].min(), mine["ts"].max())
        index = {t: i for i, t in enumerate(calendar)}
        closes = dict(zip(mine["ts"].to_list(), mine["close"].to_list()))
        origins = [t for t in mine["ts"].to_list() if first <= t <= last and index[t] + DAILY.horizon < len(calendar)]
        steps = np.array([calendar[index[t] + 1:index[t] + 1 + DAILY.horizon] for t in origins], dtype=object)
        realised = np.array([[closes[o], *(closes.get(t, np.nan) for t in row)] for o, row in zip(origins, steps)])
        out[instrument.symbol] = (origins, steps, realised)
    return out


def chronos_member(conn, pipeline, data: DataSet, horizon_of) -> int:
    """The random-weight tiny Chronos-2 on each origin's last closes, stored as chronos-2 rows."""
    frames = []
    for symbol, (origins, steps, _) in horizon_of.items():
        mine = data.bars.filter(pl.col("symbol") == symbol).sort("ts")
        position = {t: i for i, t in enumerate(mine["ts"].to_list())}
        close = mine["close"].to_numpy()
        inputs = [{"target": close[max(0, position[t] + 1 - CHRONOS_CONTEXT):position[t] + 1].astype(np.float32)}
                  for t in origins]
        q = predict_quantiles(pipeline, inputs, DAILY.horizon, CHRONOS_CONTEXT)
        frames.append(pl.DataFrame({
            "symbol": symbol, "as_of": [t for t in origins for _ in range(DAILY.horizon)],
            "step": np.tile(np.arange(1, DAILY.horizon + 1, dtype=np.int32), len(origins)),
            "ts": [t for row in steps for t in row],
            "p10": q[..., 0].ravel(), "p50": q[..., 1].ravel(), "p90": q[..., 2].ravel(),
        }))
    return upsert_window(conn, prediction_rows(pl.concat(frames), "1d", "random-weight tiny checkpoint, closes only"))


def kronos_member(conn, horizon_of, seed: int = 7) -> int:
    """The Kronos stand-in: realised closes plus noise of KRONOS_NOISE times the horizon's own mean one-bar move."""
    rng = np.random.default_rng(seed)
    rows = []
    for symbol, (origins, steps, realised) in horizon_of.items():
        for origin, ts, path in zip(origins, steps, realised):
            if not np.isfinite(path).all():
                continue
            moves = np.abs(np.diff(path)).mean()
            steps = np.arange(1, len(ts) + 1)
            noisy = path[1:] + KRONOS_NOISE * moves * np.sqrt(steps) * rng.standard_normal(len(ts))
            rows.append((symbol, "1d", origin, list(zip(ts, noisy))))
    return write_kronos_rows(conn, rows)


def band_run(conn, data: DataSet, smoke: bool) -> dict:
    """Both band schemes on one data set's members, and their coverage per quarter and per step."""
    first = data.members_from
    windows = cadence_windows(DAILY, first, 1000)
    keys = windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(first, data.to))
    source = ClosesSource(data.bars)
    base = {"lookback": 30, "warmup": 10, "band_window": 30} if smoke else {}
    frames, seconds = {}, {}
    for band in BAND_SCHEMES:
        started = time.perf_counter()
        run = ensemble_windows(conn, DAILY, source, data.instruments, windows.ends(list(keys)),
                               EnsembleParams(band=band, **base))
        seconds[band] = time.perf_counter() - started
        frames[band] = pl.concat(run.forecasts.values()).unique(["symbol", "as_of", "step"]).with_columns(
            pl.lit(f"ensemble-{band}").alias("model_name"))
    return {"data": data.name, "seconds": seconds, **band_figures(frames, data)}


def band_figures(frames: dict[str, pl.DataFrame], data: DataSet) -> dict:
    """p10-p90 coverage per quarter and per step, and p50's scaled MAE, from ``scored_from`` on."""
    since = datetime.fromisoformat(data.scored_from).replace(tzinfo=timezone.utc)
    forecasts = pl.concat([f.select("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")
                           for f in frames.values()])
    steps = step_losses(realised_outcomes(forecasts, data.bars)).filter(pl.col("as_of") >= since).with_columns(
        (~pl.col("below_p10") & ~pl.col("above_p90")).alias("inside"),
        pl.format("{}Q{}", pl.col("as_of").dt.year(), pl.col("as_of").dt.quarter()).alias("quarter"),
    )

    def coverage(by: str) -> dict:
        table = steps.group_by("model_name", by).agg(pl.col("inside").mean()).sort(by)
        return {m: dict(zip(t[by].to_list(), t["inside"].to_list()))
                for (m,), t in table.partition_by("model_name", as_dict=True).items()}

    overall = steps.group_by("model_name").agg(
        pl.col("inside").mean().alias("coverage"), pl.col("scaled_abs_error").mean().alias("scaled_mae"),
        pl.col("below_p10").mean().alias("below"), pl.col("above_p90").mean().alias("above"),
        pl.struct("symbol", "as_of").n_unique().alias("forecasts"))
    by_symbol = steps.group_by("model_name", "symbol").agg(pl.col("inside").mean()).sort("symbol")
    return {
        "quarters": coverage("quarter"), "steps": coverage("step"),
        "overall": {r["model_name"]: r for r in overall.iter_rows(named=True)},
        "symbols": {m: dict(zip(t["symbol"], t["inside"])) for (m,), t in
                    by_symbol.partition_by("model_name", as_dict=True).items()},
    }


def run_band(smoke: bool) -> dict:
    sets = [goog_set(smoke)] + ([] if smoke else [skfolio_set()])
    results = {"runs": []}
    with scratch_database() as (url, root):
        pipeline = load_chronos2(str(write_random_checkpoint(root / "tiny", "tiny"))).pipeline
        with psycopg.connect(url, autocommit=True) as conn:
            for data in sets:
                horizon_of = horizons(data)
                chronos_member(conn, pipeline, data, horizon_of)
                kronos_member(conn, horizon_of)
                results["runs"].append(band_run(conn, data, smoke))
    return results


def print_band(results: dict) -> None:
    for r in results["runs"]:
        recent, adaptive = (r["overall"][f"ensemble-{b}"] for b in ("recent", "adaptive"))
        print(f"\n{r['data']}: {adaptive['forecasts']} forecasts scored; p50 scaled MAE adaptive / recent "
              f"{adaptive['scaled_mae'] / recent['scaled_mae']:.3f}")
        print(f"  {'':8s} {'recent':>7s} {'adaptive':>8s}")
        for b, o in (("recent", recent), ("adaptive", adaptive)):
            print(f"  overall {b}: coverage {o['coverage']:.3f} (below p10 {o['below']:.3f}, above p90 {o['above']:.3f})")
        quarters = r["quarters"]["ensemble-recent"]
        for q in quarters:
            a = r["quarters"]["ensemble-adaptive"][q]
            mark = "" if abs(a - 0.8) <= 0.05 else "  <- outside 0.80 +- 0.05"
            print(f"  {q:8s} {quarters[q]:7.3f} {a:8.3f}{mark}")
        for step in r["steps"]["ensemble-recent"]:
            print(f"  step {step:<3d} {r['steps']['ensemble-recent'][step]:7.3f} {r['steps']['ensemble-adaptive'][step]:8.3f}")
        print(f"  seconds: {r['seconds']}")


def print_schemes(results: dict) -> None:
    print(f"GOOG daily {results['range'][0]}..{results['range'][1]}: {results['windows']} windows, "
          f"{results['sessions']} sessions")
    for noise in results["runs"]:
        for r in noise["schemes"]:
            print(f"  Kronos noise {noise['noise']:.1f}  {r['scheme']:12s}  ensemble/best({r['best_member']}) scaled MAE "
                  f"{r['ensemble_over_best_mae']:.3f}  coverage {r['coverage']:.3f}  ({r['forecasts']} forecasts)  "
                  f"final location weights {r['final_location_weights']}")
    print(f"ensemble time per window / chain time per window: {results['ensemble_over_chain_per_window']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("schemes", "band", "all"), default="all")
    parser.add_argument("--from", dest="first", default="2011-07-01")
    parser.add_argument("--to", dest="last", default="2012-06-30")
    parser.add_argument("--smoke", action="store_true", help="the band part on half a year of GOOG, short windows")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results: dict = {}
    if args.part in ("schemes", "all") and not args.smoke:
        results["schemes"] = run_schemes(args.first, args.last)
        print_schemes(results["schemes"])
    if args.part in ("band", "all"):
        results["band"] = run_band(args.smoke)
        print_band(results["band"])
    results["load_average"] = os.getloadavg()
    print(f"load average {results['load_average'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
