"""Tests of the scoring maths (baselines, losses, scores, coverage, rolling series, canaries) on small hand-built
bars and forecasts, through the functions a scoring run calls."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.scoring import baselines, canaries, coverage, losses, rolling, scores
from forecasting_pipeline.scoring.frames import FORECAST_SCHEMA, PER_FORECAST_SCHEMA

UTC = pl.Datetime("us", "UTC")
START = datetime(2024, 1, 1, 21, tzinfo=timezone.utc)
A = math.log(1.01)  # |log return| of a 100 <-> 101 move


def bar_time(i: int) -> datetime:
    return START + timedelta(days=i)


def zigzag_bars(n: int = 30, symbol: str = "AAA") -> pl.DataFrame:
    """Closes 100, 101, 100, 101, ...: every one-bar change is exactly 1, so the naive scale is 1."""
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "ts": [bar_time(i) for i in range(n)],
            "close": [100.0 + (i % 2) for i in range(n)],
            "volume": [1.0] * n,
        },
        schema_overrides={"ts": UTC},
    )


def forecast_frame(rows: list[tuple]) -> pl.DataFrame:
    """Rows of (model_name, symbol, as_of bar, step, p10, p50, p90); ts is the bar as_of + step."""
    return pl.DataFrame(
        {
            "model_name": [r[0] for r in rows],
            "symbol": [r[1] for r in rows],
            "as_of": [bar_time(r[2]) for r in rows],
            "step": [r[3] for r in rows],
            "ts": [bar_time(r[2] + r[3]) for r in rows],
            "p10": [r[4] for r in rows],
            "p50": [r[5] for r in rows],
            "p90": [r[6] for r in rows],
        },
        schema=FORECAST_SCHEMA,
    )


def scored(rows: list[tuple], bars: pl.DataFrame) -> losses.ScoredForecasts:
    """What a scoring run computes for these forecasts: the fully realised ones, with both baselines."""
    frame = forecast_frame(rows)
    return losses.score_realised(losses.fully_realised(frame, bars), bars, vol_window=20)


def score_table(rows: list[tuple], bars: pl.DataFrame) -> pl.DataFrame:
    return scores.scores_from_sums(scored(rows, bars).sums)


def horizon_frame(as_of_bar: int, steps: int, symbol: str = "AAA") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": [symbol] * steps,
            "as_of": [bar_time(as_of_bar)] * steps,
            "step": list(range(1, steps + 1)),
            "ts": [bar_time(as_of_bar + s) for s in range(1, steps + 1)],
        },
        schema={"symbol": pl.String, "as_of": UTC, "step": pl.Int32, "ts": UTC},
    )


# --- pinball, coverage and relative MAE by hand -------------------------------

# Bars 21 and 23 close at 101, bar 22 at 100. With vol_window = 20 the naive
# scale at as_of bar 21 and bar 22 is the mean of 20 changes of exactly 1 -> 1.
# Model "q", step 1:
#   as_of 21 -> y = 100 (bar 22); p10 99, p50 100.5, p90 102: inside the band.
#     p10: e = y - q = 1    -> max(0.1 * 1,   -0.9 * 1)   = 0.1
#     p50: e = -0.5         -> max(0.5 * -0.5, -0.5 * -0.5) = 0.25
#     p90: e = -2           -> max(0.9 * -2,  -0.1 * -2)  = 0.2
#     mean over levels = 0.55 / 3; |y - p50| = 0.5; random walk |100 - 101| = 1
#   as_of 22 -> y = 101 (bar 23); p10 101.5, p50 102, p90 104: below p10.
#     p10: e = -0.5 -> max(-0.05, 0.45) = 0.45
#     p50: e = -1   -> 0.5
#     p90: e = -3   -> max(-2.7, 0.3)   = 0.3
#     mean over levels = 1.25 / 3; |y - p50| = 1; random walk |101 - 100| = 1
# Step-1 scores (n = 2): pinball p10 (0.1 + 0.45) / 2 = 0.275, p50 0.375,
# p90 0.25, mean_pinball (0.55/3 + 1.25/3) / 2 = 0.3, coverage 1/2, below 1/2,
# above 0, scaled MAE 0.75, random-walk MAE 1, relative MAE 0.75.
HAND_ROWS = [
    ("q", "AAA", 21, 1, 99.0, 100.5, 102.0),
    ("q", "AAA", 22, 1, 101.5, 102.0, 104.0),
    ("k", "AAA", 21, 1, None, 100.5, None),
    ("k", "AAA", 22, 1, None, 102.0, None),
]


def test_when_pinball_is_computed_on_tiny_numbers_then_it_matches_the_hand_calculation():
    frame = pl.DataFrame({"y": [100.0, 101.0], "q": [99.0, 101.5]})
    loss = frame.select(losses.pinball_loss(pl.col("y"), pl.col("q"), 0.1).alias("loss"))["loss"]
    assert loss.to_list() == pytest.approx([0.1, 0.45], abs=1e-12)


def test_when_a_banded_model_is_scored_then_pinball_coverage_and_relative_mae_match_the_hand_calculation():
    table = score_table(HAND_ROWS, zigzag_bars())
    row = table.filter(pl.col("model_name") == "q").row(0, named=True)
    assert (row["symbol"], row["step"], row["levels"], row["n"]) == ("AAA", 1, 3, 2)
    assert row["pinball_p10"] == pytest.approx(0.275, abs=1e-12)
    assert row["pinball_p50"] == pytest.approx(0.375, abs=1e-12)
    assert row["pinball_p90"] == pytest.approx(0.25, abs=1e-12)
    assert row["mean_pinball"] == pytest.approx(0.3, abs=1e-12)
    assert (row["n_below_p10"], row["n_above_p90"]) == (1, 0)
    assert row["coverage_p10_p90"] == 0.5
    assert row["below_p10_rate"] == 0.5
    assert row["above_p90_rate"] == 0.0
    assert row["scaled_mae"] == pytest.approx(0.75, abs=1e-12)
    assert row["scaled_rw_mae"] == pytest.approx(1.0, abs=1e-12)
    assert row["relative_mae"] == pytest.approx(0.75, abs=1e-12)


def test_when_a_central_only_model_is_scored_then_coverage_is_null_and_mean_pinball_is_half_the_abs_error():
    table = score_table(HAND_ROWS, zigzag_bars())
    row = table.filter(pl.col("model_name") == "k").row(0, named=True)
    # Errors |100 - 100.5| = 0.5 and |101 - 102| = 1: p50 pinball (0.25 + 0.5) / 2.
    assert (row["levels"], row["n"]) == (1, 2)
    assert row["pinball_p50"] == pytest.approx(0.375, abs=1e-12)
    assert row["mean_pinball"] == pytest.approx(0.375, abs=1e-12)
    assert row["scaled_mae"] == pytest.approx(0.75, abs=1e-12)
    for column in ("pinball_p10", "pinball_p90", "n_below_p10", "n_above_p90",
                   "coverage_p10_p90", "below_p10_rate", "above_p90_rate"):
        assert row[column] is None, column


def test_when_baselines_are_included_then_both_are_scored_on_the_same_rows_and_random_walk_has_relative_mae_1():
    table = score_table(HAND_ROWS, zigzag_bars())
    assert table["model_name"].to_list() == ["baseline-random-walk", "baseline-rw-vol", "k", "q"]
    assert table["n"].to_list() == [2, 2, 2, 2]
    rw = table.filter(pl.col("model_name") == baselines.BASELINE_RANDOM_WALK).row(0, named=True)
    assert rw["relative_mae"] == 1.0
    assert rw["levels"] == 1


def test_when_scores_are_summarised_then_counts_add_and_ratios_are_recomputed_from_totals():
    bars = pl.concat([zigzag_bars(symbol="AAA"), zigzag_bars(symbol="BBB")])
    rows = HAND_ROWS[:2] + [("q", "BBB", 21, 1, 99.0, 100.0, 102.0), ("q", "BBB", 22, 1, 99.0, 101.0, 102.0)]
    summary = scores.summarise_scores(scored(rows, bars).sums)
    row = summary.filter(pl.col("model_name") == "q").row(0, named=True)
    # BBB: both inside, p50 exact (MAE 0, random walk MAE 1). Pooled: 1 failure in 4.
    assert (row["n"], row["n_symbols"], row["n_below_p10"], row["n_above_p90"]) == (4, 2, 1, 0)
    assert row["coverage_p10_p90"] == 0.75
    assert row["scaled_mae"] == pytest.approx(0.375, abs=1e-12)
    assert row["relative_mae"] == pytest.approx(0.375, abs=1e-12)
    assert (row["kupiec_lr"], row["kupiec_p_value"]) == pytest.approx(coverage.kupiec_pof(4, 1, 0.2))


# --- realised outcomes ---------------------------------------------------------


def test_when_a_step_has_no_bar_yet_then_outcomes_drop_it_and_fully_realised_drops_the_whole_forecast():
    bars = zigzag_bars(n=24)  # last bar is 23
    rows = [
        ("q", "AAA", 21, 1, 99.0, 100.0, 102.0),
        ("q", "AAA", 21, 2, 99.0, 100.0, 102.0),
        ("q", "AAA", 22, 1, 99.0, 100.0, 102.0),
        ("q", "AAA", 22, 2, 99.0, 100.0, 102.0),  # target bar 24 not closed yet
    ]
    outcomes = losses.realised_outcomes(forecast_frame(rows), bars, vol_window=20)
    assert outcomes.select("as_of", "step", "actual", "close_at_as_of", "naive_scale").rows() == [
        (bar_time(21), 1, 100.0, 101.0, 1.0),
        (bar_time(21), 2, 101.0, 101.0, 1.0),
        (bar_time(22), 1, 101.0, 100.0, 1.0),
    ]
    complete = losses.fully_realised(forecast_frame(rows), bars)
    assert complete.select("as_of", "step").rows() == [(bar_time(21), 1), (bar_time(21), 2)]


def test_when_history_is_shorter_than_min_history_then_the_forecast_is_not_scored():
    bars = zigzag_bars(n=30)
    rows = [("q", "AAA", 10, 1, 99.0, 100.0, 102.0), ("q", "AAA", 21, 1, 99.0, 100.0, 102.0)]
    result = scored(rows, bars)
    assert scores.scores_from_sums(result.sums).filter(pl.col("model_name") == "q")["n"].to_list() == [1]
    assert result.unscaled.filter(pl.col("model_name") == "q")["as_of"].to_list() == [bar_time(10)]


# --- baselines -----------------------------------------------------------------


def test_when_the_random_walk_baseline_is_built_then_p50_is_the_last_close_and_later_bars_change_nothing():
    bars = zigzag_bars(n=22)  # ends at the as_of bar 21 (close 101)
    later = pl.DataFrame(
        {"symbol": ["AAA"] * 2, "ts": [bar_time(22), bar_time(23)], "close": [500.0, 1.0], "volume": [1.0, 1.0]},
        schema_overrides={"ts": UTC},
    )
    horizon = horizon_frame(21, steps=3)
    before = baselines.random_walk_baseline(bars, horizon, vol_window=20)
    after = baselines.random_walk_baseline(pl.concat([bars, later]), horizon, vol_window=20)
    assert before.equals(after)
    rw = before.filter(pl.col("model_name") == baselines.BASELINE_RANDOM_WALK)
    assert rw["p50"].to_list() == [101.0, 101.0, 101.0]
    assert rw["p10"].null_count() == 3 and rw["p90"].null_count() == 3
    assert before.schema == pl.Schema(FORECAST_SCHEMA)


def test_when_as_of_falls_between_bars_then_the_baseline_uses_the_last_bar_before_it():
    horizon = horizon_frame(21, steps=1).with_columns(pl.col("as_of") + timedelta(hours=6))
    rw = baselines.random_walk_baseline(zigzag_bars(), horizon, vol_window=20)
    assert rw["p50"].to_list() == [101.0, 101.0]


def test_when_the_vol_baseline_is_built_then_its_band_widens_with_sqrt_step():
    band = baselines.random_walk_baseline(zigzag_bars(), horizon_frame(21, steps=4), vol_window=20).filter(
        pl.col("model_name") == baselines.BASELINE_RW_VOL
    )
    # The 20 log returns into bars 2..21 are +-ln(1.01), ten of each: mean 0,
    # sample std sqrt(20 * A^2 / 19).
    sigma = A * math.sqrt(20 / 19)
    steps = np.arange(1, 5)
    expected_p90 = 101.0 * np.exp(1.2815515655446004 * sigma * np.sqrt(steps))
    expected_p10 = 101.0 * np.exp(-1.2815515655446004 * sigma * np.sqrt(steps))
    np.testing.assert_allclose(band["p90"].to_numpy(), expected_p90, rtol=1e-12)
    np.testing.assert_allclose(band["p10"].to_numpy(), expected_p10, rtol=1e-12)
    half_width = np.log(band["p90"].to_numpy() / band["p50"].to_numpy())
    np.testing.assert_allclose(half_width / np.sqrt(steps), half_width[0], rtol=1e-12)


def test_when_forecasts_already_hold_baselines_then_including_baselines_again_is_refused():
    rows = [(baselines.BASELINE_RANDOM_WALK, "AAA", 21, 1, None, 101.0, None)]
    with pytest.raises(ValueError, match="already contain baseline models"):
        scored(rows, zigzag_bars())


def test_when_a_row_has_only_one_end_of_the_band_then_scoring_raises():
    rows = [("q", "AAA", 21, 1, 99.0, 100.0, None)]
    with pytest.raises(ValueError, match="only one of p10/p90"):
        scored(rows, zigzag_bars())


# --- Kupiec and the coverage alarm ----------------------------------------------


def test_when_failures_match_the_expected_rate_then_kupiec_gives_lr_0_and_p_1():
    assert coverage.kupiec_pof(100, 20, 0.2) == (0.0, 1.0)


def test_when_failures_double_the_expected_rate_then_kupiec_p_is_tiny():
    # LR = -2 [60 ln(0.8/0.6) + 40 ln(0.2/0.4)] = 80 ln 2 - 120 ln(4/3) = 20.92992...
    lr, p_value = coverage.kupiec_pof(100, 40, 0.2)
    assert lr == pytest.approx(20.929925750581923, rel=1e-12)
    assert p_value == pytest.approx(4.763938479565438e-06, rel=1e-9)


def test_when_there_are_zero_or_all_failures_then_kupiec_avoids_log_zero():
    # 0 failures: LR = -2 * 100 ln(0.8); all failures: LR = -2 * 100 ln(0.2).
    assert coverage.kupiec_pof(100, 0, 0.2)[0] == pytest.approx(-200 * math.log(0.8), rel=1e-12)
    assert coverage.kupiec_pof(100, 100, 0.2)[0] == pytest.approx(-200 * math.log(0.2), rel=1e-12)
    assert coverage.kupiec_pof(100, 0, 0.2)[1] == pytest.approx(2.381733854683342e-11, rel=1e-9)


@pytest.mark.parametrize(
    ("n_obs", "n_fail", "rate", "message"),
    [(0, 0, 0.2, "n_obs"), (10, 11, 0.2, "n_fail"), (10, -1, 0.2, "n_fail"), (10, 2, 1.0, "expected_rate")],
)
def test_when_kupiec_inputs_are_out_of_range_then_it_raises(n_obs, n_fail, rate, message):
    with pytest.raises(ValueError, match=message):
        coverage.kupiec_pof(n_obs, n_fail, rate)


def test_when_coverage_fails_often_with_enough_data_then_the_alarm_fires_and_not_otherwise():
    assert coverage.coverage_alarm(100, 40).fired
    assert not coverage.coverage_alarm(100, 20).fired
    small = coverage.coverage_alarm(99, 40)
    assert (small.fired, small.enough_data, small.n_obs) == (False, False, 99)
    assert small.p_value < coverage.COVERAGE_ALARM_ALPHA


def test_when_rolling_coverage_is_computed_then_each_point_pools_the_last_window_dates():
    rows = [
        ("q", "AAA", 21, 1, 99.0, 100.0, 102.0),   # y 100 inside
        ("q", "AAA", 22, 1, 101.5, 102.0, 104.0),  # y 101 below
        ("q", "AAA", 23, 1, 90.0, 95.0, 99.0),     # y 100 above
        ("k", "AAA", 23, 1, None, 95.0, None),     # central-only: ignored
    ]
    series = rolling.rolling_coverage(scored(rows, zigzag_bars()).per_forecast, window=2).filter(
        pl.col("model_name") == "q")
    assert series.select("model_name", "n_obs", "n_below_p10", "n_above_p90", "coverage_p10_p90").rows() == [
        ("q", 1, 0, 0, 1.0),
        ("q", 2, 1, 0, 0.5),
        ("q", 2, 1, 1, 0.0),
    ]


# --- regime-shift canary -----------------------------------------------------------


def losses_frame(loss_a: np.ndarray, loss_b: np.ndarray) -> pl.DataFrame:
    n = len(loss_a)
    dates = [bar_time(i) for i in range(n)]
    return pl.DataFrame(
        {
            "model_name": ["a"] * n + ["b"] * n,
            "symbol": ["AAA"] * (2 * n),
            "as_of": dates + dates,
            "levels": [3] * (2 * n),
            "mean_pinball": np.concatenate([loss_a, loss_b]),
            "scaled_abs_error": np.concatenate([loss_a, loss_b]),
        },
        schema_overrides={"as_of": UTC, "levels": pl.Int8},
    )


def test_when_model_a_turns_from_better_to_worse_then_the_canary_fires_once():
    # A is 0.3 better for 60 dates, then 0.3 worse for 60. The rolling mean of
    # 20 first exceeds the deadband 0.05 when 12 of its 20 points are +0.3
    # ((12 - 8) * 0.3 / 20 = 0.06), at index 60 + 11 = 71; five points later,
    # index 75, the flip is confirmed.
    loss_b = np.ones(120)
    loss_a = np.where(np.arange(120) < 60, 0.7, 1.3)
    comparison = canaries.rolling_model_comparison(losses_frame(loss_a, loss_b), "a", "b", window=20)
    assert comparison.height == 120
    assert comparison["rolling_diff"].null_count() == 19
    events = canaries.detect_sign_flip(comparison["rolling_diff"], persist=5, deadband=0.05,
                                      times=comparison["as_of"])
    assert len(events) == 1
    event = events[0]
    assert (event.from_sign, event.to_sign) == (-1, 1)
    assert (event.started_index, event.confirmed_index) == (71, 75)
    assert event.confirmed_at == bar_time(75)
    assert event.value == pytest.approx((16 - 4) * 0.3 / 20, abs=1e-12)


def test_when_the_loss_difference_is_noise_around_zero_then_the_canary_does_not_fire():
    # Per-date differences with sd 0.05 in naive-scale units: the rolling mean
    # of 20 has sd about 0.011, so the 0.05 deadband is about 4.5 sd away.
    # Fifty seeded series of 500 dates, none of which may fire.
    loss_b = np.ones(500)
    rng = np.random.default_rng(20240101)
    comparison = canaries.rolling_model_comparison(
        losses_frame(loss_b + rng.normal(0.0, 0.05, size=500), loss_b), "a", "b"
    )
    assert canaries.detect_sign_flip(comparison["rolling_diff"]) == []
    for _ in range(50):
        rolling = pl.Series(rng.normal(0.0, 0.05, size=500)).rolling_mean(canaries.CANARY_WINDOW)
        assert canaries.detect_sign_flip(rolling) == []


def test_when_a_flip_does_not_persist_then_no_event_is_reported():
    # Established negative, then only four points positive beyond the deadband.
    diff = [-0.2] * 5 + [0.2] * 4 + [0.0] + [0.2] * 4 + [-0.2] * 3
    assert canaries.detect_sign_flip(diff, persist=5, deadband=0.05) == []


def test_when_models_score_different_levels_then_mean_pinball_comparison_is_refused():
    frame = losses_frame(np.ones(3), np.ones(3)).with_columns(
        pl.when(pl.col("model_name") == "b").then(1).otherwise(3).cast(pl.Int8).alias("levels")
    )
    with pytest.raises(ValueError, match="scaled_abs_error"):
        canaries.rolling_model_comparison(frame, "a", "b", window=2)
    assert canaries.rolling_model_comparison(frame, "a", "b", window=2, loss_column="scaled_abs_error").height == 3


def test_when_per_forecast_losses_are_computed_then_only_fully_realised_forecasts_appear():
    bars = zigzag_bars(n=24)
    rows = [
        ("q", "AAA", 21, 1, 99.0, 100.5, 102.0),   # y 100: losses 0.1, 0.25, 0.2
        ("q", "AAA", 21, 2, 100.0, 101.0, 102.0),  # y 101: losses 0.1, 0.0, 0.1
        ("q", "AAA", 22, 1, 99.0, 100.0, 102.0),
        ("q", "AAA", 22, 2, 99.0, 100.0, 102.0),   # bar 24 not closed yet
    ]
    per_forecast = losses.per_forecast_losses(forecast_frame(rows), bars, vol_window=20, include_baselines=False)
    assert per_forecast.schema == pl.Schema(PER_FORECAST_SCHEMA)
    assert per_forecast.select("model_name", "as_of", "realised_at", "levels", "n_steps", "n_below_p10").rows() == [
        ("q", bar_time(21), bar_time(23), 3, 2, 0)
    ]
    # Step means 0.55/3 and 0.2/3 -> forecast mean 0.75/6 = 0.125; abs errors 0.5 and 0 -> 0.25.
    assert per_forecast["mean_pinball"].item() == pytest.approx(0.125, abs=1e-12)
    assert per_forecast["scaled_abs_error"].item() == pytest.approx(0.25, abs=1e-12)


def test_when_sums_of_two_disjoint_sets_of_forecasts_are_added_then_they_equal_the_sums_of_all():
    bars = zigzag_bars(n=40)
    rows = [
        (model, "AAA", as_of, step, *((p50 - 1.5, p50, p50 + 1.5) if model == "q" else (None, p50, None)))
        for model in ("q", "k")
        for as_of in range(21, 36)
        for step, p50 in ((1, 100.0 + (as_of % 3) * 0.5), (2, 101.0 - (as_of % 2)))
    ]
    early = [r for r in rows if r[2] < 28]
    late = [r for r in rows if r[2] >= 28]

    added = scores.add_sums(scored(early, bars).sums, scored(late, bars).sums)
    whole = scored(rows, bars).sums

    assert added.select("model_name", "symbol", "step", "levels", "n", "n_below_p10", "n_above_p90",
                        "first_as_of", "last_as_of").equals(
        whole.select("model_name", "symbol", "step", "levels", "n", "n_below_p10", "n_above_p90",
                     "first_as_of", "last_as_of"))
    for column in ("sum_pinball_p10", "sum_pinball_p50", "sum_mean_pinball", "sum_scaled_abs_error"):
        np.testing.assert_allclose(added[column].fill_null(-1).to_numpy(), whole[column].fill_null(-1).to_numpy(),
                                   rtol=1e-12)
    np.testing.assert_allclose(scores.scores_from_sums(added)["relative_mae"].fill_null(-1).to_numpy(),
                               scores.scores_from_sums(whole)["relative_mae"].fill_null(-1).to_numpy(), rtol=1e-12)
