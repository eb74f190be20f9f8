"""The ensemble without Dagster: weights, the combination rule, the calibrated band, matching Kronos, writing, point-in-time.

Members are stored through the real writers in real PostgreSQL; the bars are real daily GOOG
(2012) read through the ``files`` source. The stand-in "chronos-2" here is a random walk with a
fixed-width band (these tests need a banded member, not a model); the GOOG acceptance test with
the real tiny checkpoint is ``test_ensemble_real_bars.py``.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from forecasting_pipeline.ensemble.calibration import Scores, calibrate_adaptive, calibrate_recent, horizon_groups
from forecasting_pipeline.ensemble.combine import Band, combine
from forecasting_pipeline.ensemble.weights import LossSums, blend, choose, location_losses, simplex_grid
from forecasting_pipeline.ensemble.window_ensembles import EnsembleParams, ensemble_windows, write_run
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import FileSource
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.scoring.canaries import ensemble_canary
from forecasting_pipeline.scoring.losses import per_forecast_losses
from forecasting_pipeline.serving.gateway import latest_forecast
from forecasting_pipeline.storage.ensemble_weights import read_ensemble_weights
from forecasting_pipeline.storage.kronos_rows import matching_kronos_forecasts
from forecasting_pipeline.storage.ml_predictions import (
    PredictionRow,
    prediction_rows,
    read_predictions,
    upsert_window,
    upsert_windows,
)
from forecasting_pipeline_tests.conftest import skilful_kronos, write_kronos_rows

GOOG = [Instrument("GOOG", "equity", "XNAS")]
WINDOWS = cadence_windows(DAILY, "2004-01-01")
HORIZON = DAILY.horizon
FIRST_ORIGIN, LAST_ORIGIN = datetime(2012, 1, 3, tzinfo=timezone.utc), datetime(2012, 6, 30, tzinfo=timezone.utc)
WINDOW = "2012-05-15"  # a Tuesday: its as_of is that session's close
PARAMS = EnsembleParams(lookback=200, warmup=10, shrinkage=20.0)


def chronos_rows(bars: pl.DataFrame, origins: list[datetime]) -> list[PredictionRow]:
    """A banded stand-in stored as chronos-2 rows: the last close with a band of +-2 naive moves per step."""
    ts, close = bars["ts"].to_list(), bars["close"].to_numpy()
    index = {t: i for i, t in enumerate(ts)}
    frames = []
    for origin in origins:
        i = index[origin]
        spread = 2.0 * np.abs(np.diff(close[i - 20:i + 1])).mean() * np.sqrt(np.arange(1, HORIZON + 1))
        frames.append(pl.DataFrame({
            "symbol": "GOOG", "as_of": origin, "step": np.arange(1, HORIZON + 1, dtype=np.int32),
            "ts": ts[i + 1:i + 1 + HORIZON], "p10": close[i] - spread, "p50": np.full(HORIZON, close[i]),
            "p90": close[i] + spread,
        }))
    return prediction_rows(pl.concat(frames), "1d", "stand-in")


@pytest.fixture
def goog(real_bars):
    return real_bars("GOOG")


def sessions(bars: pl.DataFrame, first: datetime, last: datetime) -> list[datetime]:
    """The session closes from ``first`` to ``last``, both inclusive."""
    return bars.filter(pl.col("ts").is_between(first, last))["ts"].to_list()


def store_members(conn, bars: pl.DataFrame, origins: list[datetime], kronos: bool = True) -> None:
    upsert_window(conn, chronos_rows(bars, origins))
    if kronos:
        write_kronos_rows(conn, skilful_kronos(bars, origins, HORIZON))


def run_window(conn, bar_files, bars, window=WINDOW, params=PARAMS, last_window=None):
    """The ensemble of ``window`` (to ``last_window`` when given: one run over the range, as a backfill)."""
    bar_files.write("GOOG", bars)
    keys = WINDOWS.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(window, last_window or window))
    return ensemble_windows(conn, DAILY, FileSource(str(bar_files.root)), GOOG, WINDOWS.ends(list(keys)), params)


# ---------------------------------------------------------------------------
# weights


def test_when_the_grid_is_built_then_it_spans_the_simplex_with_each_member_alone_first():
    grid = simplex_grid(3)

    assert grid.shape == (231, 3)
    assert np.allclose(grid.sum(axis=1), 1.0) and (grid >= 0).all()
    assert (grid[:3] == np.eye(3)).all()
    assert len({tuple(row) for row in grid}) == 231


def test_when_a_member_is_useless_then_the_grid_gives_it_nothing_and_inverse_loss_still_some():
    rng = np.random.default_rng(1)
    actual = rng.normal(100, 1, (200, 10))
    p50 = np.stack([actual + rng.normal(0, 0.5, actual.shape),  # skilful
                    np.full(actual.shape, 100.0),  # persistence-like
                    actual + 40.0], axis=-1)  # useless
    sums = LossSums(location_losses(p50, actual, np.ones(200), simplex_grid(3)).sum(axis=0), 200)

    grid_weights = choose(sums, simplex_grid(3), "grid")
    inverse = choose(sums, simplex_grid(3), "inverse")

    assert grid_weights[2] == 0.0 and grid_weights[0] > 0.5
    assert inverse[2] > 0.0 and np.isclose(inverse.sum(), 1.0)
    assert choose(sums, simplex_grid(3), "sqrt-inverse")[2] > inverse[2]


def test_when_an_instrument_has_few_scored_forecasts_then_weights_are_equal_and_later_shrunk_toward_pooled():
    grid = simplex_grid(2)
    own = LossSums(np.array([1.0, 3.0] + [2.0] * (len(grid) - 2)) * 30, 30)  # member 0 best for this instrument
    pooled = LossSums(np.array([3.0, 1.0] + [2.0] * (len(grid) - 2)) * 300, 300)  # member 1 best overall

    early = blend(LossSums(own.sums / 3, 9), pooled, grid, "grid", warmup=10, shrinkage=30)
    later = blend(own, pooled, grid, "grid", warmup=10, shrinkage=30)

    assert early.warm_up and early.weights.tolist() == [0.5, 0.5]
    assert not later.warm_up and later.shrink == pytest.approx(0.5)
    assert later.weights.tolist() == pytest.approx([0.5, 0.5]) and later.own.tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------
# combination and band


def test_when_a_point_member_is_combined_then_it_moves_the_band_without_narrowing_it():
    # Member 0 has a band 95/100/105; member 1 is a point forecast at 110.
    p50 = np.array([[100.0, 110.0]])
    bands = np.array([[[95.0, 100.0, 105.0]]])

    band = combine(p50, np.array([0.5, 0.5]), bands, np.array([1.0]))

    assert (band.p10[0], band.p50[0], band.p90[0]) == (100.0, 105.0, 110.0)


def test_when_the_band_is_too_wide_then_calibration_brings_coverage_to_about_80_percent():
    rng = np.random.default_rng(3)
    actual = rng.normal(0.0, 1.0, (400, 10))
    wide = Band(np.full(actual.shape, -2.56), np.zeros(actual.shape), np.full(actual.shape, 2.56))  # a 98% band

    calibration = calibrate_recent(wide, actual, np.ones(400), ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10),))
    fresh = rng.normal(0.0, 1.0, (2000, 10))
    narrowed = calibration.apply(Band(np.full(fresh.shape, -2.56), np.zeros(fresh.shape), np.full(fresh.shape, 2.56)))

    assert calibration.applied and (0.45 < calibration.lower).all() and (calibration.lower < 0.55).all()
    assert (0.45 < calibration.upper).all() and (calibration.upper < 0.55).all()
    assert abs(np.mean((fresh >= narrowed.p10) & (fresh <= narrowed.p90)) - 0.8) < 0.02


def test_when_every_outcome_lies_above_the_median_then_the_quantiles_stay_ordered_and_finite():
    actual = np.full((50, 10), 10.0)
    band = Band(np.full(actual.shape, -1.0), np.zeros(actual.shape), np.full(actual.shape, 1.0))

    calibration = calibrate_recent(band, actual, np.ones(50), ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10),))
    out = calibration.apply(band)

    assert (calibration.lower == 0.0).all() and (calibration.upper == 10.0).all()
    assert np.isfinite([out.p10, out.p50, out.p90]).all() and (out.p10 <= out.p50).all() and (out.p50 <= out.p90).all()


@pytest.mark.parametrize(("horizon", "count", "groups"), [
    (10, 3, ((1, 2), (3, 4), (5, 6, 7, 8, 9, 10))),
    (24, 3, ((1, 2), tuple(range(3, 9)), tuple(range(9, 25)))),
    (10, 1, (tuple(range(1, 11)),)),
    (3, 5, ((1,), (2,), (3,))),
])
def test_when_steps_are_grouped_then_early_groups_are_short_and_every_step_is_in_one(horizon, count, groups):
    assert horizon_groups(horizon, count) == groups


def test_when_outcomes_turn_three_times_wider_then_the_tracked_factor_follows_and_a_zero_gamma_does_not():
    rng = np.random.default_rng(5)
    calm, storm = rng.normal(0.0, 1.0, (30, 10)), rng.normal(0.0, 3.0, (30, 10))
    ratios = np.abs(np.vstack([calm, storm])) / 1.2816  # |z| over the 90% quantile of a unit normal
    scores = Scores(ratios, ratios, np.ones(60, dtype=bool))
    # One occasion a day, each realised ten days after its as_of.
    as_of = np.arange(60) * 86_400_000_000
    realised_at = as_of + 10 * 86_400_000_000
    groups = horizon_groups(10, 3)

    tracked = calibrate_adaptive(scores, realised_at, as_of, np.arange(60), 30, groups, gamma=1.0)
    fixed = calibrate_adaptive(scores, realised_at, as_of, np.arange(60), 30, groups, gamma=0.0)

    assert tracked.applied and tracked.occasions == 60 and tracked.tracked == 30
    assert np.allclose(fixed.lower, fixed.lower[0], rtol=0.3) and (fixed.lower < 1.6).all()
    # A band three times too narrow misses often: the factors grow at least to the new scale. The ten
    # occasions realised after the change were judged by the stale factor, so the gain overshoots.
    assert (tracked.lower > 2 * fixed.lower).all() and (tracked.upper > 2 * fixed.upper).all()
    assert np.mean(ratios[30:] <= tracked.lower) >= 0.8


# ---------------------------------------------------------------------------
# Kronos's rows and the writer


def test_when_kronos_wrote_the_next_sessions_forecast_one_bar_later_then_only_this_sessions_row_matches(conn, goog):
    origins = sessions(goog, datetime(2012, 5, 14, tzinfo=timezone.utc), datetime(2012, 5, 16, tzinfo=timezone.utc))
    write_kronos_rows(conn, skilful_kronos(goog, origins, HORIZON))
    first, second = origins[0], origins[1]  # second = first + exactly one day: within the one-bar tolerance

    matched = matching_kronos_forecasts(conn, "1d", pl.DataFrame(
        {"symbol": ["GOOG"], "as_of": [first], "next_close": [second]}))
    unbounded = matching_kronos_forecasts(conn, "1d", pl.DataFrame({"symbol": ["GOOG"], "as_of": [first]}))

    assert matched["created_at"].unique().to_list() == [first]
    assert matched["ts"].min() == second
    # Without the next close the fan's one-bar rule alone takes the newest row: the next session's.
    assert unbounded["created_at"].unique().to_list() == [second]


def test_when_a_writer_is_asked_for_rows_of_another_model_then_it_refuses_and_writes_nothing(conn, goog):
    rows = chronos_rows(goog, sessions(goog, FIRST_ORIGIN, FIRST_ORIGIN + timedelta(days=3)))
    as_ensemble = [PredictionRow(r.symbol, r.timeframe, "ensemble", r.model_version, r.as_of, r.predictions) for r in rows]
    as_kronos = [PredictionRow(r.symbol, r.timeframe, "kronos-base", r.model_version, r.as_of, r.predictions) for r in rows]

    with pytest.raises(ValueError, match="refusing to write model 'kronos-base'"):
        upsert_windows(conn, {WINDOW: as_kronos}, "kronos-base")
    with pytest.raises(ValueError, match=r"refusing to write rows of model\(s\) \['kronos-base'\]: this writer writes only 'ensemble'"):
        upsert_windows(conn, {WINDOW: as_kronos}, "ensemble")
    with pytest.raises(ValueError, match="this writer writes only 'chronos-2'"):
        upsert_window(conn, as_ensemble)

    assert conn.execute("SELECT count(*) FROM ml_predictions").fetchone()[0] == 0
    assert upsert_windows(conn, {WINDOW: as_ensemble}, "ensemble") == {WINDOW: len(rows)}


# ---------------------------------------------------------------------------
# a window's ensemble


def test_when_future_bars_and_forecasts_are_stored_then_a_windows_ensemble_is_unchanged(conn, goog, bar_files):
    end = WINDOWS.end_of(WINDOW)
    known, later = sessions(goog, FIRST_ORIGIN, end), sessions(goog, end, LAST_ORIGIN)
    store_members(conn, goog, known)
    before = run_window(conn, bar_files, goog.filter(pl.col("ts") <= end))

    # Later bars (a crash that never happened), and forecasts from later origins; then the window
    # alone, and inside one run over five more weeks of windows, whose bars realise its recent forecasts.
    crashed = goog.with_columns(pl.when(pl.col("ts") > end).then(pl.col("close") * 0.6).otherwise(pl.col("close")))
    store_members(conn, crashed, later)
    alone = run_window(conn, bar_files, crashed)
    in_backfill = run_window(conn, bar_files, crashed, last_window="2012-06-20")
    rerun = run_window(conn, bar_files, crashed, last_window="2012-06-20")

    key = next(iter(before.explanations))
    for after in (alone, in_backfill):
        assert before.forecasts[WINDOW].drop("p10", "p90").equals(after.forecasts[WINDOW].drop("p10", "p90"))
        # The volatility band's sigma is a rolling std, whose last bits depend on where the bars read start.
        assert_frame_equal(before.forecasts[WINDOW], after.forecasts[WINDOW], check_exact=False, rel_tol=1e-12, abs_tol=0)
        assert before.explanations[key] == after.explanations[key]
    assert all(in_backfill.forecasts[w].equals(rerun.forecasts[w]) for w in in_backfill.forecasts)
    explained = before.explanations[key]
    assert explained.details["scored_forecasts"] > PARAMS.warmup and not explained.details["warm_up"]
    assert explained.details["calibration"]["applied"] and explained.details["calibration"]["tracked"] > 0
    # The run's later windows do use what was realised after this one: the information is there.
    [latest] = in_backfill.explanations_of("2012-06-20")
    assert latest.details["scored_forecasts"] > explained.details["scored_forecasts"]


def test_when_a_forecast_is_realised_exactly_at_as_of_then_it_counts_and_one_bar_later_it_does_not(conn, goog, bar_files):
    store_members(conn, goog, sessions(goog, FIRST_ORIGIN, LAST_ORIGIN))

    run = run_window(conn, bar_files, goog)

    [explained] = run.explanations.values()
    ts = goog["ts"].to_list()
    origins = sessions(goog, FIRST_ORIGIN, LAST_ORIGIN)
    realised_at = {o: ts[ts.index(o) + HORIZON] for o in origins}
    at_or_before = sum(r <= explained.as_of for r in realised_at.values())
    assert explained.details["scored_forecasts"] == at_or_before
    assert sum(r < explained.as_of for r in realised_at.values()) == at_or_before - 1


def test_when_losses_are_computed_then_they_are_scorings_own_on_the_same_forecasts(conn, goog, bar_files):
    store_members(conn, goog, sessions(goog, FIRST_ORIGIN, LAST_ORIGIN), kronos=False)

    run = run_window(conn, bar_files, goog)

    [explained] = run.explanations.values()
    stored = read_predictions(conn, "1d").select("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")
    scored = per_forecast_losses(stored, goog.filter(pl.col("ts") <= explained.as_of))
    for member in ("chronos-2", "baseline-rw-vol"):
        mine = scored.filter(pl.col("model_name") == member)
        assert explained.details["member_losses"][member] == {
            "scaled_mae": pytest.approx(mine["scaled_abs_error"].mean(), abs=1e-6),
            "scaled_pinball": pytest.approx(mine["mean_pinball"].mean(), abs=1e-6),
        }


def test_when_kronos_has_not_written_then_the_forecast_goes_without_it_and_says_why(conn, goog, bar_files):
    end = WINDOWS.end_of(WINDOW)
    known = sessions(goog, FIRST_ORIGIN, end)
    store_members(conn, goog, known[:-1])
    upsert_window(conn, chronos_rows(goog, known[-1:]))  # the window's own origin: chronos-2 only

    run = run_window(conn, bar_files, goog.filter(pl.col("ts") <= end))
    written = write_run(conn, run)

    [explained] = run.explanations.values()
    assert set(explained.weights) == {"chronos-2", "baseline-rw-vol"}
    assert explained.missing == {"kronos-base": "no kronos-base row written within 1 day after as_of and before "
                                                "the next bar closed"}
    assert run.missing_members(WINDOW) == {"GOOG": explained.missing}
    assert written == {WINDOW: 1}
    [stored] = read_ensemble_weights(conn, "1d")
    assert stored["missing"] == explained.missing and stored["weights"] == explained.weights
    assert sum(w["location"] for w in stored["weights"].values()) == pytest.approx(1.0)
    row = read_predictions(conn, "1d", "ensemble")
    assert row.height == HORIZON and row["model_version"][0] == PARAMS.model_version()
    assert (row["p10"] <= row["p50"]).all() and (row["p50"] <= row["p90"]).all()
    # The gateway (and `forecasting-pipeline latest GOOG --model ensemble`) reads it like any model.
    served = latest_forecast(conn, "GOOG", "1d", model="ensemble")
    assert served.model_name == "ensemble" and served.as_of == explained.as_of and len(served.steps) == HORIZON
    assert served.steps[0]["p50"] == pytest.approx(row["p50"][0])


# ---------------------------------------------------------------------------
# the canary on the scores


def per_forecast(model: str, levels: int, losses: list[float]) -> pl.DataFrame:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return pl.DataFrame({
        "model_name": model, "symbol": "GOOG", "as_of": [start + timedelta(days=i) for i in range(len(losses))],
        "levels": pl.Series([levels] * len(losses), dtype=pl.Int8), "mean_pinball": losses,
        "scaled_abs_error": [2 * x if levels == 1 else 2.5 * x for x in losses],
    })


@pytest.mark.parametrize(("ensemble_excess", "fires"), [(0.0, False), (0.04, False), (0.2, True)])
def test_when_the_ensemble_trails_its_best_member_for_a_while_then_its_canary_fires(ensemble_excess, fires):
    kronos = [0.4] * 40
    losses = pl.concat([
        per_forecast("kronos-base", 1, kronos),  # best member: a point forecast, compared on scaled MAE
        per_forecast("baseline-rw-vol", 3, [1.0] * 40),
        per_forecast("ensemble", 3, [(2 * k + ensemble_excess) / 2.5 for k in kronos]),
    ])

    canary = ensemble_canary(losses)

    assert canary.best_member == "kronos-base" and canary.loss_column == "scaled_abs_error"
    assert canary.fired is fires
    assert canary.latest_rolling_diff == pytest.approx(ensemble_excess)
