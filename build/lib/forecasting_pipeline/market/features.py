"""Engineered covariates for Chronos-2: the close is the target, and volume and the high-low spread inform it.

Both covariates are past-only: their future values are unknown when the forecast is made.
"""

from __future__ import annotations

import polars as pl

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
    return (
        bars.sort("symbol", "ts")
        .select(
            "symbol",
            "ts",
            pl.col("close"),
            pl.col("volume").log1p().alias("volume"),
            ((pl.col("high") - pl.col("low")) / pl.col("close")).alias("high_low_spread"),
        )
    )
