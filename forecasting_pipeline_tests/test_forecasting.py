"""Model inputs, the batched Chronos-2 call and forecast shaping, on the real tiny Chronos2Pipeline."""

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.forecasting.inputs import Rejection, SeriesKey, model_inputs, usable_model_inputs
from forecasting_pipeline.forecasting.model import load_chronos2
from forecasting_pipeline.forecasting.predict import predict_quantiles
from forecasting_pipeline.forecasting.shaping import (
    drop_rejected,
    shape_forecasts,
    unfit_forecasts,
)
from forecasting_pipeline.forecasting.window_forecasts import WindowForecasts
from forecasting_pipeline.market.features import engineer_covariates

UTC = timezone.utc


def _bars(symbol: str, n: int, start_price: float = 100.0) -> pl.DataFrame:
    ts = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(n)]
    close = start_price * np.exp(np.cumsum(np.random.default_rng(len(symbol)).normal(0, 0.01, n)))
    return pl.DataFrame({
        "symbol": symbol, "ts": ts, "open": close, "high": close * 1.01, "low": close * 0.99,
        "close": close, "volume": np.full(n, 1000.0),
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))


@pytest.fixture
def tiny(tiny_checkpoint):
    return load_chronos2(str(tiny_checkpoint)).pipeline


def test_when_inputs_are_built_then_each_instrument_gets_its_last_context_bars_and_two_covariates():
    covariates = engineer_covariates(pl.concat([_bars("AAA", 50), _bars("BBB", 30)]))

    keys, inputs = model_inputs(covariates, "w", context_length=40)

    assert [(k.symbol, k.as_of) for k in keys] == [
        ("AAA", datetime(2025, 2, 19, tzinfo=UTC)), ("BBB", datetime(2025, 1, 30, tzinfo=UTC))
    ]
    assert [x["target"].shape for x in inputs] == [(40,), (30,)]
    assert sorted(inputs[0]["past_covariates"]) == ["high_low_spread", "volume"]


def test_when_a_close_is_not_finite_then_the_error_names_window_symbol_and_bar():
    bars = _bars("AAA", 20).with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise(pl.col("close")).alias("close")
    )

    with pytest.raises(ValueError, match=r"w: AAA: non-finite close at bar 2025-01-08T00:00:00\+00:00"):
        model_inputs(engineer_covariates(bars), "w", context_length=64)


def test_when_series_are_batched_differently_then_each_forecast_is_the_same(tiny):
    covariates = engineer_covariates(pl.concat([_bars(s, 60, p) for s, p in (("AAA", 100), ("BBB", 1.1), ("CCC", 5e4))]))
    _, inputs = model_inputs(covariates, "w", context_length=64)

    one_pass = predict_quantiles(tiny, inputs, horizon=5, context_length=64, batch_size=256)
    three_passes = predict_quantiles(tiny, inputs, horizon=5, context_length=64, batch_size=3)

    assert one_pass.shape == (3, 5, 3)
    np.testing.assert_allclose(one_pass, three_passes, rtol=1e-5)
    assert (np.diff(one_pass, axis=-1) >= 0).all()


def test_when_forecasts_are_shaped_then_rows_are_series_times_horizon_on_the_given_calendar(tiny):
    covariates = engineer_covariates(pl.concat([_bars("AAA", 60), _bars("BBB", 60)]))
    keys, inputs = model_inputs(covariates, "w", context_length=64)
    quantiles = predict_quantiles(tiny, inputs, horizon=4, context_length=64)

    def weekly(symbol, as_of, n):
        return [as_of + timedelta(days=7 * (i + 1)) for i in range(n)]

    forecasts = shape_forecasts(keys, quantiles, weekly)

    assert forecasts.height == 2 * 4
    assert forecasts.filter(symbol="AAA")["ts"].to_list() == [
        datetime(2025, 3, 8, tzinfo=UTC) + timedelta(days=7 * i) for i in range(4)
    ]
    assert unfit_forecasts(forecasts, horizon=4) == []
    assert [str(r) for r in unfit_forecasts(forecasts.filter(pl.col("step") < 4), horizon=4)] == [
        "w: AAA: 3 steps, expected 4", "w: BBB: 3 steps, expected 4"
    ]


def test_when_a_value_is_beyond_float32_then_only_that_instrument_is_left_out_naming_column_and_bar():
    huge_close = _bars("BBB", 30).with_columns(pl.col("open", "high", "low", "close") * 1e39)
    # (high - low) / close = 1e40 at one bar: finite prices whose spread covariate overflows.
    huge_spread = _bars("CCC", 30).with_columns(
        pl.when(pl.int_range(pl.len()) == 12).then(1e-30).otherwise(pl.col(c)).alias(c) for c in ("low", "close")
    ).with_columns(pl.when(pl.int_range(pl.len()) == 12).then(1e10).otherwise(pl.col("high")).alias("high"))
    covariates = engineer_covariates(pl.concat([_bars("AAA", 30), huge_close, huge_spread]))

    keys, inputs, rejected = usable_model_inputs(covariates, "w", context_length=64)

    assert [k.symbol for k in keys] == ["AAA"] and len(inputs) == 1
    assert [(r.symbol, r.rule) for r in rejected] == [("BBB", "model_input"), ("CCC", "model_input")]
    assert str(rejected[0]).startswith("w: BBB: close 1.02062e+41 at bar 2025-01-01T00:00:00+00:00 is beyond float32")
    assert rejected[1].message.startswith("high_low_spread 1e+40 at bar 2025-01-13T00:00:00+00:00 is beyond float32")
    with pytest.raises(ValueError, match="w: BBB: close"):
        model_inputs(covariates, "w", context_length=64)


def test_when_forecasts_are_unfit_then_each_window_and_instrument_is_named_once_by_its_first_bad_step():
    ts = [datetime(2025, 1, 2, tzinfo=UTC) + timedelta(days=i) for i in range(3)]

    def rows(symbol, p10, p50, p90, steps=3):
        return pl.DataFrame({
            "window": "w", "symbol": symbol, "as_of": datetime(2025, 1, 1, tzinfo=UTC), "step": list(range(1, steps + 1)),
            "ts": ts[:steps], "p10": p10[:steps], "p50": p50[:steps], "p90": p90[:steps],
        }).with_columns(pl.col("as_of", "ts").dt.cast_time_unit("us"), pl.col("step").cast(pl.Int32))

    ok = [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]
    forecasts = pl.concat([
        rows("AAA", *ok),
        rows("BBB", [1.0, 1.0, 1.0], [2.0, float("inf"), float("nan")], [3.0, 3.0, 3.0]),
        rows("CCC", [1.0, 2.5, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]),
        rows("DDD", *ok, steps=2),
    ])

    rejected = unfit_forecasts(forecasts, horizon=3)

    assert [(r.symbol, r.rule, r.message) for r in rejected] == [
        ("BBB", "non_finite", "non-finite quantile at 2025-01-03T00:00:00+00:00"),
        ("CCC", "crossing", "quantiles cross at 2025-01-03T00:00:00+00:00"),
        ("DDD", "horizon", "2 steps, expected 3"),
    ]
    assert drop_rejected(forecasts, rejected)["symbol"].unique().to_list() == ["AAA"]


def test_when_a_window_keeps_no_instrument_then_it_is_empty_with_every_reason_listed():
    rejected = [Rejection("w1", "AAA", "model_input", "non-finite close at bar x"),
                Rejection("w1", "BBB", "horizon", "2 steps, expected 3")]
    kept = shape_forecasts([SeriesKey("w0", "AAA", datetime(2025, 1, 1, tzinfo=UTC))], np.ones((1, 2, 3)),
                           lambda symbol, as_of, n: [as_of + timedelta(days=i + 1) for i in range(n)])
    result = WindowForecasts({"w0": kept.drop("window"), "w1": kept.clear().drop("window")}, rejected, None, 1, 2, 64)

    assert result.empty == {"w1": (
        "window w1: every instrument's forecast was rejected, so nothing is written. "
        "AAA: model_input: non-finite close at bar x; BBB: horizon: 2 steps, expected 3"
    )}
