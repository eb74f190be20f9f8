"""The frames scoring passes around: their columns, dtypes and the checks that reject malformed ones.

Forecasts (long, one row per step): ``model_name`` Utf8, ``symbol`` Utf8, ``as_of``
Datetime("us", "UTC") (close time of the last bar the forecast used), ``step`` Int32 (1..H),
``ts`` Datetime("us", "UTC") (close time of the forecast bar), ``p10`` Float64 nullable, ``p50``
Float64, ``p90`` Float64 nullable. Central-only models have both ``p10`` and ``p90`` null.

Bars: ``symbol`` Utf8, ``ts`` Datetime("us", "UTC") (bar close time), ``close`` Float64; other
columns are ignored.

Per-forecast losses: one row per (model_name, symbol, as_of, levels), see ``PER_FORECAST_SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from forecasting_pipeline.forecasting.shaping import FORECAST_SCHEMA as _WINDOW_FORECAST_SCHEMA

UTC = pl.Datetime("us", "UTC")

FORECAST_COLUMNS = ("model_name", "symbol", "as_of", "step", "ts", "p10", "p50", "p90")
FORECAST_SCHEMA: dict[str, pl.DataType] = {"model_name": pl.Utf8(), **_WINDOW_FORECAST_SCHEMA}

PER_FORECAST_SCHEMA: dict[str, pl.DataType] = {
    "model_name": pl.Utf8(),
    "symbol": pl.Utf8(),
    "as_of": UTC,
    # Close of the last step: the instant the whole horizon was realised.
    "realised_at": UTC,
    "levels": pl.Int8(),
    "n_steps": pl.Int32(),
    # Means over the steps, in naive-scale units.
    "mean_pinball": pl.Float64(),
    "scaled_abs_error": pl.Float64(),
    "scaled_rw_abs_error": pl.Float64(),
    # Steps whose close fell below p10 / above p90; null for central-only forecasts.
    "n_below_p10": pl.Int32(),
    "n_above_p90": pl.Int32(),
}
PER_FORECAST_COLUMNS = tuple(PER_FORECAST_SCHEMA)


def require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    """ValueError naming the missing columns of ``frame``, called ``what`` in the message."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {frame.columns}")


def check_forecasts(forecasts: pl.DataFrame) -> pl.DataFrame:
    """The forecast columns, typed; ValueError for a null p50, a step below 1, half a band or a duplicate step."""
    require_columns(forecasts, FORECAST_COLUMNS, "forecasts")
    out = forecasts.select(FORECAST_COLUMNS).cast(FORECAST_SCHEMA)  # type: ignore[arg-type]
    n_null_p50 = out["p50"].null_count()
    if n_null_p50:
        raise ValueError(f"forecasts have {n_null_p50} rows with a null p50; every forecast row needs a median")
    n_bad_step = out.filter(pl.col("step") < 1).height
    if n_bad_step:
        raise ValueError(f"forecasts have {n_bad_step} rows with step < 1; steps count from 1")
    half_band = out.filter(pl.col("p10").is_null() != pl.col("p90").is_null()).height
    if half_band:
        raise ValueError(
            f"forecasts have {half_band} rows with only one of p10/p90; a band needs both ends or neither"
        )
    duplicated = out.select("model_name", "symbol", "as_of", "step").is_duplicated().sum()
    if duplicated:
        raise ValueError(f"forecasts have {duplicated} rows sharing (model_name, symbol, as_of, step)")
    return out


def check_bars(bars: pl.DataFrame) -> pl.DataFrame:
    """``symbol``, ``ts``, ``close`` typed and sorted; ValueError for two bars of a symbol at one close time."""
    require_columns(bars, ("symbol", "ts", "close"), "bars")
    out = bars.select("symbol", pl.col("ts").cast(UTC), pl.col("close").cast(pl.Float64))
    duplicated = out.select("symbol", "ts").is_duplicated().sum()
    if duplicated:
        raise ValueError(f"bars have {duplicated} rows sharing (symbol, ts); one bar per symbol and close time")
    return out.sort("symbol", "ts")


def empty_forecasts() -> pl.DataFrame:
    return pl.DataFrame(schema=FORECAST_SCHEMA)


def empty_per_forecast() -> pl.DataFrame:
    return pl.DataFrame(schema=PER_FORECAST_SCHEMA)
