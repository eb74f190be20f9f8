"""Engineered covariates for Chronos-2: the close is the target, and volume and the high-low spread inform it.

Both covariates are past-only: their future values are unknown when the forecast is made.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from forecasting_pipeline.market.window_frames import WindowFrames, window_frames_of

COVARIATE_COLUMNS = ("volume", "high_low_spread")


def engineer_covariates(bars: pl.DataFrame) -> pl.DataFrame:
    """Turn validated bars into the model's per-bar inputs.

    Parameters
    ----------
    bars
        Columns symbol, ts, open, high, low, close, volume; one row per closed bar.

    Returns
    -------
    polars.DataFrame
        Columns symbol, ts, close (the target, in price units), ``volume`` = log1p(volume) and
        ``high_low_spread`` = (high - low) / close (a scale-free intrabar range), sorted by symbol, ts.

    Notes
    -----
    Volume spans orders of magnitude between instruments and spikes on news days; log1p keeps a
    spike from dominating the covariate after Chronos-2's own per-series scaling. The spread is
    divided by the close so that it reads as volatility, comparable across price levels.
    """
    return covariate_columns(bars.sort("symbol", "ts"))


def covariate_columns(bars: pl.DataFrame) -> pl.DataFrame:
    """``engineer_covariates`` of bars already in (symbol, ts) order: one row per bar, in the same order.

    Row-wise, so it can be computed once on bars that several windows share (``WindowFrames.map_blocks``).
    """
    return bars.select(
        "symbol",
        "ts",
        pl.col("close"),
        pl.col("volume").log1p().alias("volume"),
        ((pl.col("high") - pl.col("low")) / pl.col("close")).alias("high_low_spread"),
    )


def window_covariates(bars: Mapping[str, pl.DataFrame]) -> WindowFrames:
    """Each window's ``engineer_covariates``, computed once per shared block of bars.

    Every block of a window's bars (``WindowFrames``) is one instrument's bars in time order, or a
    whole window's frame, which is sorted here first; either way each window gets what
    ``engineer_covariates`` of its frame gives.
    """
    return window_frames_of(bars).map_blocks(_in_order)


def _in_order(bars: pl.DataFrame) -> pl.DataFrame:
    ts_sorted = bars["ts"].is_sorted() if bars["symbol"].n_unique() <= 1 else False
    return covariate_columns(bars if ts_sorted or bars.is_empty() else bars.sort("symbol", "ts"))
