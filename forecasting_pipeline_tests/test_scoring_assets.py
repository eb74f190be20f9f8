"""The scoring asset end to end: hand-made forecasts in real PostgreSQL, bars in files, a real Dagster materialisation.

Bars follow 100, 102, 104, 102, 100, ... (every one-bar change is 2), so the naive scale of every
forecast is exactly 2 and each score can be worked out by hand.
"""

import json
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pydantic
import pytest
import yaml

from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource
from forecasting_pipeline.orchestration.scoring_assets import COVERAGE_CHECK, SIGN_FLIP_CHECK, build_scoring
from forecasting_pipeline.storage.forecast_scores import read_scores
from forecasting_pipeline.storage.ml_predictions import prediction_rows, upsert_window

REPO = Path(__file__).resolve().parents[1]

SYMBOL = "BTC-USD"  # 24/7: one daily bar closing at 00:00 UTC every day
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
PATTERN = (100.0, 102.0, 104.0, 102.0)


def bar_ts(i: int) -> datetime:
    return START + timedelta(days=i)


def close(i: int) -> float:
    return PATTERN[i % 4]


def write_bars(root, n_bars: int) -> None:
    closes = [close(i) for i in range(n_bars)]
    folder = root / "1d"
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "ts": [bar_ts(i) for i in range(n_bars)], "open": closes, "high": [c + 1 for c in closes],
        "low": [c - 1 for c in closes], "close": closes, "volume": [1000.0] * n_bars,
    }).write_parquet(folder / f"{SYMBOL}.parquet")


def store_chronos(conn, as_of_index: int, steps: list[tuple[float, float, float]]) -> None:
    """One chronos-2 forecast from bar ``as_of_index``, steps (p10, p50, p90), written by the pipeline's own upsert."""
    frame = pl.DataFrame({
        "symbol": [SYMBOL] * len(steps),
        "as_of": [bar_ts(as_of_index)] * len(steps),
        "step": list(range(1, len(steps) + 1)),
        "ts": [bar_ts(as_of_index + s) for s in range(1, len(steps) + 1)],
        "p10": [s[0] for s in steps], "p50": [s[1] for s in steps], "p90": [s[2] for s in steps],
    })
    upsert_window(conn, prediction_rows(frame, "1d", "test"))


def store_kronos(conn, as_of_index: int, closes: list[float]) -> None:
    """A Kronos row as Kronos writes it: as_of NULL, steps {"ts", "close"}."""
    steps = [{"ts": bar_ts(as_of_index + s).isoformat(), "close": c} for s, c in enumerate(closes, start=1)]
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
        (SYMBOL, json.dumps(steps), bar_ts(as_of_index)),
    )


@pytest.fixture
def score_resources(database_url, tmp_path):
    return {
        "database": PostgresResource(url=database_url),
        "instruments": InstrumentsResource(symbols=[SYMBOL]),
        "market_data": MarketDataResource(source="files", path=str(tmp_path / "bars")),
    }


def materialise_scores(score_resources, instance, until_index: int, **config):
    return dg.materialize(
        build_scoring(DAILY),
        resources=score_resources,
        instance=instance,
        run_config={"ops": {"forecast_scores_1d": {"config": {"until": bar_ts(until_index).isoformat(), **config}}}},
    )


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def row(scores: pl.DataFrame, model: str, step: int) -> dict:
    rows = scores.filter((pl.col("model_name") == model) & (pl.col("step") == step))
    assert rows.height == 1
    return rows.row(0, named=True)


def test_when_a_small_known_case_is_scored_then_the_table_holds_the_hand_computed_scores(
    score_resources, instance, conn, tmp_path
):
    write_bars(tmp_path / "bars", 40)
    # From bar 32 (close 100): bar 33 closes 102, bar 34 closes 104.
    store_chronos(conn, 32, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])
    store_kronos(conn, 32, [104.0, 100.0])
    # From bar 38: its second step (bar 40) is after the last bar, so it waits.
    store_chronos(conn, 38, [(99.0, 100.0, 101.0), (99.0, 100.0, 101.0)])

    result = materialise_scores(score_resources, instance, until_index=39)

    assert result.success
    scores = read_scores(conn, "1d")
    assert scores.height == 8  # 4 models x 2 steps
    assert scores["n"].to_list() == [1] * 8
    c1, c2 = row(scores, "chronos-2", 1), row(scores, "chronos-2", 2)
    # Step 1, actual 102, scale 2: pinball 0.1*3/2, 0.5*1/2, 0.1*1/2; |102-101|/2 against |102-100|/2.
    assert (c1["pinball_p10"], c1["pinball_p50"], c1["pinball_p90"]) == pytest.approx((0.15, 0.25, 0.05))
    assert c1["mean_pinball"] == pytest.approx(0.15)
    assert (c1["coverage_p10_p90"], c1["relative_mae"]) == pytest.approx((1.0, 0.5))
    # Step 2, actual 104: pinball 0.1*4/2, 0.5*1/2, 0.1*1/2; |104-103|/2 against |104-100|/2.
    assert (c2["pinball_p10"], c2["pinball_p50"], c2["pinball_p90"]) == pytest.approx((0.2, 0.25, 0.05))
    assert c2["mean_pinball"] == pytest.approx(0.5 / 3)
    assert (c2["coverage_p10_p90"], c2["relative_mae"]) == pytest.approx((1.0, 0.25))
    k1, k2 = row(scores, "kronos-base", 1), row(scores, "kronos-base", 2)
    # Kronos has a central forecast only: scored on p50 = close, one level, no band.
    assert (k1["levels"], k1["pinball_p50"], k1["scaled_mae"], k1["relative_mae"]) == pytest.approx((1, 0.5, 1.0, 1.0))
    assert (k2["pinball_p50"], k2["scaled_mae"]) == pytest.approx((1.0, 2.0))
    assert k1["coverage_p10_p90"] is None and k1["pinball_p10"] is None
    assert k1["first_as_of"] == bar_ts(32)  # as_of placed on the bar before its first step
    metadata = result.asset_materializations_for_node("forecast_scores_1d")[0].metadata
    assert metadata["forecasts_scored"].value == {"chronos-2": 1, "kronos-base": 1}
    assert metadata["forecasts_awaiting_realisation"].value == {"chronos-2": 1}
    assert metadata["rolling_scores"].value.startswith("![rolling scores, 1d](data:image/png;base64,")
    assert "| chronos-2 | 3 | 2 |" in metadata["summary"].value
    assert checks(result)[SIGN_FLIP_CHECK].metadata["compared"].value == "chronos-2 - kronos-base"


def test_when_kronos_stored_a_malformed_row_then_the_others_are_scored_as_before(
    score_resources, instance, conn, tmp_path
):
    write_bars(tmp_path / "bars", 40)
    store_chronos(conn, 32, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])
    store_kronos(conn, 32, [104.0, 100.0])
    conn.commit()
    materialise_scores(score_resources, instance, until_index=39)
    before = read_scores(conn, "1d").drop("computed_at", strict=False)
    # A failed Kronos batch that wrote an error object instead of steps.
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
        (SYMBOL, json.dumps({"error": "CUDA out of memory"}), bar_ts(34)),
    )
    conn.commit()

    # With the project's dagster.yaml logging settings, as `make dev` runs it.
    python_logs = yaml.safe_load((REPO / "dagster.yaml").read_text())["python_logs"]
    with dg.instance_for_test(overrides={"python_logs": python_logs}) as logging_instance:
        result = materialise_scores(score_resources, logging_instance, until_index=39)
        warnings = [r.user_message for r in logging_instance.all_logs(result.run_id) if r.level == logging.WARNING]

    assert result.success
    assert read_scores(conn, "1d").drop("computed_at", strict=False).equals(before)
    assert any(w.startswith("skipped 1 malformed kronos-base 1d forecast steps") for w in warnings)


def test_when_scored_then_the_baselines_are_the_last_close_and_its_volatility_band(
    score_resources, instance, conn, tmp_path
):
    write_bars(tmp_path / "bars", 40)
    store_chronos(conn, 32, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])

    materialise_scores(score_resources, instance, until_index=39)

    scores = read_scores(conn, "1d")
    rw1, rw2 = row(scores, "baseline-random-walk", 1), row(scores, "baseline-random-walk", 2)
    # p50 = 100, the close at as_of: |102-100|/2 and |104-100|/2; relative to itself, exactly 1.
    assert (rw1["pinball_p50"], rw1["scaled_mae"], rw1["relative_mae"]) == pytest.approx((0.5, 1.0, 1.0))
    assert (rw2["pinball_p50"], rw2["scaled_mae"], rw2["relative_mae"]) == pytest.approx((1.0, 2.0, 1.0))
    assert rw1["levels"] == 1 and rw1["coverage_p10_p90"] is None
    # The band: 100 * exp(-/+1.2816 * sigma * sqrt(step)), sigma from the 32 log returns up to as_of.
    sigma = float(np.std(np.diff(np.log([close(i) for i in range(33)])), ddof=1))
    for step, actual in ((1, 102.0), (2, 104.0)):
        p10 = 100.0 * math.exp(-1.2815515655446004 * sigma * math.sqrt(step))
        p90 = 100.0 * math.exp(1.2815515655446004 * sigma * math.sqrt(step))
        vol = row(scores, "baseline-rw-vol", step)
        assert vol["pinball_p10"] == pytest.approx(0.1 * (actual - p10) / 2)
        assert vol["pinball_p90"] == pytest.approx(max(0.9 * (actual - p90), -0.1 * (actual - p90)) / 2)
        assert vol["coverage_p10_p90"] == (1.0 if p10 <= actual <= p90 else 0.0)
    # sigma is about 0.0199: 102 lies inside the one-step band, 104 above the two-step one.
    assert row(scores, "baseline-rw-vol", 1)["coverage_p10_p90"] == 1.0
    assert row(scores, "baseline-rw-vol", 2)["above_p90_rate"] == 1.0


def test_when_scoring_runs_twice_then_the_rows_are_replaced_not_duplicated(score_resources, instance, conn, tmp_path):
    write_bars(tmp_path / "bars", 40)
    store_chronos(conn, 32, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])
    materialise_scores(score_resources, instance, until_index=39)
    first = read_scores(conn, "1d")

    materialise_scores(score_resources, instance, until_index=39)

    assert read_scores(conn, "1d").equals(first)
    assert conn.execute("SELECT count(*) FROM forecast_scores").fetchone()[0] == 6


def test_when_the_better_model_changes_then_the_sign_flip_check_warns(score_resources, instance, conn, tmp_path):
    write_bars(tmp_path / "bars", 100)
    # 60 one-step forecasts from bars 30..89: Chronos-2 exact and Kronos 4 off for the first 30,
    # then the other way round. The rolling difference (window 20) goes from -2 to +2.
    for k, i in enumerate(range(30, 90)):
        actual = close(i + 1)
        chronos, kronos = (actual, actual + 4) if k < 30 else (actual + 4, actual)
        store_chronos(conn, i, [(chronos - 1, chronos, chronos + 1)])
        store_kronos(conn, i, [kronos])

    result = materialise_scores(score_resources, instance, until_index=99)

    flip = checks(result)[SIGN_FLIP_CHECK]
    assert flip.passed is False
    assert flip.severity == dg.AssetCheckSeverity.WARN
    assert flip.metadata["compared"].value == "chronos-2 - kronos-base"
    # Confirmed when the rolling mean has been above the deadband for 5 dates: bars 70..74.
    assert flip.metadata["recent_flips"].value == [{
        "started_at": bar_ts(70).isoformat(), "confirmed_at": bar_ts(74).isoformat(),
        "from_sign": -1, "to_sign": 1, "rolling_diff": 1.0,
    }]
    # 20 dates x 1 step is below the 100 observations the Kupiec alarm needs.
    assert checks(result)[COVERAGE_CHECK].passed is True


def test_when_a_band_is_far_too_narrow_then_the_coverage_check_warns(score_resources, instance, conn, tmp_path):
    write_bars(tmp_path / "bars", 60)
    # 20 forecasts of 5 steps whose band (p50 +- 0.1 around the last close) never holds the close.
    for i in range(30, 50):
        store_chronos(conn, i, [(close(i) + 2.9, close(i) + 3.0, close(i) + 3.1)] * 5)

    result = materialise_scores(score_resources, instance, until_index=59)

    coverage = checks(result)[COVERAGE_CHECK]
    assert coverage.passed is False
    assert coverage.severity == dg.AssetCheckSeverity.WARN
    assert coverage.metadata["failing_models"].value == ["chronos-2"]
    assert coverage.metadata["models"].value["chronos-2"]["n_obs"] == 100
    assert coverage.metadata["models"].value["chronos-2"]["n_fail"] == 100
    # Without Kronos the loss canary watches Chronos-2 against the random walk.
    assert checks(result)[SIGN_FLIP_CHECK].metadata["compared"].value == "chronos-2 - baseline-random-walk"


def test_when_review_days_is_negative_then_the_run_is_refused_naming_the_field(score_resources, instance):
    # Dagster hands the pydantic constraint (ge=0) to pydantic when the step builds its config.
    with pytest.raises(pydantic.ValidationError, match="review_days"):
        materialise_scores(score_resources, instance, until_index=39, review_days=-1)


def test_when_the_asset_runs_after_a_window_realises_then_it_adds_only_that_forecast(
    score_resources, instance, conn, tmp_path
):
    write_bars(tmp_path / "bars", 40)
    store_chronos(conn, 32, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])
    store_chronos(conn, 36, [(99.0, 101.0, 103.0), (100.0, 103.0, 105.0)])  # realised at bar 38

    first = materialise_scores(score_resources, instance, until_index=37)
    second = materialise_scores(score_resources, instance, until_index=38)

    first_meta = first.asset_materializations_for_node("forecast_scores_1d")[0].metadata
    second_meta = second.asset_materializations_for_node("forecast_scores_1d")[0].metadata
    assert first_meta["run"].value == "rebuilt from scratch (no scores kept yet)"
    assert first_meta["forecasts_awaiting_realisation"].value == {"chronos-2": 1}
    assert second_meta["run"].value == "incremental"
    assert second_meta["forecasts_scored_this_run"].value == {
        "baseline-random-walk": 1, "baseline-rw-vol": 1, "chronos-2": 1}
    assert second_meta["forecasts_scored"].value == {"chronos-2": 2}
    assert row(read_scores(conn, "1d"), "chronos-2", 1)["n"] == 2


def test_when_rebuild_is_set_then_every_stored_forecast_is_rescored_to_the_same_scores(
    score_resources, instance, conn, tmp_path
):
    write_bars(tmp_path / "bars", 40)
    for as_of in (30, 32, 34):
        store_chronos(conn, as_of, [(99.0, 101.0, 103.0)])
        store_kronos(conn, as_of, [101.0])
    materialise_scores(score_resources, instance, until_index=33)
    materialise_scores(score_resources, instance, until_index=39)
    incremental = read_scores(conn, "1d").drop("scored_through")

    rebuilt = materialise_scores(score_resources, instance, until_index=39, rebuild=True)

    metadata = rebuilt.asset_materializations_for_node("forecast_scores_1d")[0].metadata
    assert metadata["run"].value == "rebuilt from scratch (asked for)"
    assert metadata["forecasts_scored_this_run"].value["kronos-base"] == 3
    again = read_scores(conn, "1d").drop("scored_through")
    assert again.drop("pinball_p10", "pinball_p50", "pinball_p90", "mean_pinball", "scaled_mae", "scaled_rw_mae",
                      "relative_mae").equals(incremental.drop("pinball_p10", "pinball_p50", "pinball_p90",
                                                              "mean_pinball", "scaled_mae", "scaled_rw_mae",
                                                              "relative_mae"))
    assert again["mean_pinball"].to_list() == pytest.approx(incremental["mean_pinball"].to_list(), rel=1e-12)
