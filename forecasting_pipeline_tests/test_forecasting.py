"""Model inputs, the batched Chronos-2 call and forecast shaping, on the real tiny Chronos2Pipeline."""

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.chronos_model import load_chronos2
from forecasting_pipeline.features import engineer_covariates
from forecasting_pipeline.forecasting import forecast_problems, model_inputs, predict_quantiles, shape_forecasts

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
    assert forecast_problems(forecasts, horizon=4) == []
    assert forecast_problems(forecasts.filter(pl.col("step") < 4), horizon=4) == [
        "w: AAA: 3 steps, expected 4", "w: BBB: 3 steps, expected 4"
    ]
