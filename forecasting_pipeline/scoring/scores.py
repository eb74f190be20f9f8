"""Scores per model, symbol and horizon step, kept as additive sums so that new forecasts add to them.

A score row is one (model_name, symbol, step, levels). Its state is a count and sums
(``SUM_SCHEMA``): ``n`` realised steps, the sums of the scaled pinball losses, of the mean
pinball, of the scaled absolute errors of p50 and of the random walk, the band's tail hits, and
the first and last ``as_of``. Two sets of sums over disjoint forecasts add up (``add_sums``) to
the sums over their union, which is what lets a scoring run add only the forecasts realised
since the last one. Every mean and rate is derived from the sums in one place
(``scores_from_sums``), so the stored table, the summary and a recomputation agree.
"""

from __future__ import annotations

import polars as pl

from forecasting_pipeline.scoring.coverage import EXPECTED_BAND_FAIL_RATE, band_rates, kupiec_pof
from forecasting_pipeline.scoring.frames import UTC

SCORE_KEY = ("model_name", "symbol", "step", "levels")

SUM_SCHEMA: dict[str, pl.DataType] = {
    "model_name": pl.Utf8(), "symbol": pl.Utf8(), "step": pl.Int32(), "levels": pl.Int8(),
    "n": pl.Int64(),
    # Null for central forecasts (levels 1), like the band counts.
    "sum_pinball_p10": pl.Float64(), "sum_pinball_p50": pl.Float64(), "sum_pinball_p90": pl.Float64(),
    "sum_mean_pinball": pl.Float64(),
    "n_below_p10": pl.Int64(), "n_above_p90": pl.Int64(),
    "sum_scaled_abs_error": pl.Float64(), "sum_scaled_rw_abs_error": pl.Float64(),
    "first_as_of": UTC, "last_as_of": UTC,
}
SUM_COLUMNS = tuple(SUM_SCHEMA)
_ADDED = ("n", "sum_pinball_p10", "sum_pinball_p50", "sum_pinball_p90", "sum_mean_pinball",
          "n_below_p10", "n_above_p90", "sum_scaled_abs_error", "sum_scaled_rw_abs_error")
_BAND_ONLY = ("sum_pinball_p10", "sum_pinball_p90", "n_below_p10", "n_above_p90")

SCORE_COLUMNS = (
    "model_name", "symbol", "step", "levels", "n", "pinball_p10", "pinball_p50", "pinball_p90",
    "mean_pinball", "n_below_p10", "n_above_p90", "coverage_p10_p90", "below_p10_rate",
    "above_p90_rate", "scaled_mae", "scaled_rw_mae", "relative_mae", "first_as_of", "last_as_of",
)


def empty_sums() -> pl.DataFrame:
    return pl.DataFrame(schema=SUM_SCHEMA)


def _banded(expr: pl.Expr) -> pl.Expr:
    # Sums of p10/p90 losses and band hits exist only for rows with a band.
    return pl.when(pl.col("levels").first() == 3).then(expr)


def score_sums(steps: pl.DataFrame) -> pl.DataFrame:
    """``SUM_SCHEMA`` rows of ``losses.step_losses`` rows, one per (model_name, symbol, step, levels)."""
    if steps.is_empty():
        return empty_sums()
    return (
        steps.group_by(SCORE_KEY)
        .agg(
            pl.len().alias("n"),
            _banded(pl.col("pinball_p10").sum()).alias("sum_pinball_p10"),
            pl.col("pinball_p50").sum().alias("sum_pinball_p50"),
            _banded(pl.col("pinball_p90").sum()).alias("sum_pinball_p90"),
            pl.col("mean_pinball").sum().alias("sum_mean_pinball"),
            _banded(pl.col("below_p10").sum()).alias("n_below_p10"),
            _banded(pl.col("above_p90").sum()).alias("n_above_p90"),
            pl.col("scaled_abs_error").sum().alias("sum_scaled_abs_error"),
            pl.col("scaled_rw_abs_error").sum().alias("sum_scaled_rw_abs_error"),
            pl.col("as_of").min().alias("first_as_of"),
            pl.col("as_of").max().alias("last_as_of"),
        )
        .select(SUM_COLUMNS)
        .cast(SUM_SCHEMA)  # type: ignore[arg-type]
        .sort(SCORE_KEY)
    )


def add_sums(*parts: pl.DataFrame) -> pl.DataFrame:
    """The sums over the union of the forecasts behind each part (parts must cover disjoint forecasts)."""
    frames = [p.select(SUM_COLUMNS).cast(SUM_SCHEMA) for p in parts if p.height]  # type: ignore[arg-type]
    if not frames:
        return empty_sums()
    return (
        pl.concat(frames)
        .group_by(SCORE_KEY)
        .agg(
            *(_banded(pl.col(c).sum()).alias(c) if c in _BAND_ONLY else pl.col(c).sum() for c in _ADDED),
            pl.col("first_as_of").min(),
            pl.col("last_as_of").max(),
        )
        .select(SUM_COLUMNS)
        .cast(SUM_SCHEMA)  # type: ignore[arg-type]
        .sort(SCORE_KEY)
    )


def _means_and_rates(frame: pl.DataFrame) -> pl.DataFrame:
    n = pl.col("n").cast(pl.Float64)
    return frame.with_columns(
        (pl.col("sum_pinball_p10") / n).alias("pinball_p10"),
        (pl.col("sum_pinball_p50") / n).alias("pinball_p50"),
        (pl.col("sum_pinball_p90") / n).alias("pinball_p90"),
        (pl.col("sum_mean_pinball") / n).alias("mean_pinball"),
        (pl.col("sum_scaled_abs_error") / n).alias("scaled_mae"),
        (pl.col("sum_scaled_rw_abs_error") / n).alias("scaled_rw_mae"),
        *band_rates(),
        # A zero random-walk error (price unchanged on every row) has no ratio.
        pl.when(pl.col("sum_scaled_rw_abs_error") > 0)
        .then(pl.col("sum_scaled_abs_error") / pl.col("sum_scaled_rw_abs_error"))
        .alias("relative_mae"),
    )


def scores_from_sums(sums: pl.DataFrame) -> pl.DataFrame:
    """Scores per (model_name, symbol, step, levels) from their sums, sorted.

    Columns ``SCORE_COLUMNS``:

    * ``n``: realised, scaled forecast steps; ``levels`` 3 with a p10-p90 band, 1 central-only.
    * ``pinball_p10``, ``pinball_p50``, ``pinball_p90``: mean pinball loss divided by the naive
      scale (p10/p90 null for central-only).
    * ``mean_pinball``: mean over rows of the mean scaled pinball over the available levels, a
      CRPS approximation. For central-only models it is ``pinball_p50``, half the scaled
      absolute error: *not* comparable with ``mean_pinball`` of banded models.
    * ``n_below_p10``, ``n_above_p90``, ``coverage_p10_p90`` (about 0.8 when calibrated),
      ``below_p10_rate``, ``above_p90_rate`` (about 0.1 each): null for central-only models.
    * ``scaled_mae``, ``scaled_rw_mae``: mean scaled absolute error of p50 and of the random
      walk on the same rows; ``relative_mae`` their ratio, below 1 better than persistence.
    * ``first_as_of``, ``last_as_of``: the forecasts pooled.
    """
    return _means_and_rates(sums).select(SCORE_COLUMNS).sort(SCORE_KEY)


def summarise_scores(sums: pl.DataFrame) -> pl.DataFrame:
    """Overall scores per (model_name, levels), pooling every symbol and step of ``sums``.

    Columns ``model_name``, ``levels``, ``n``, ``n_symbols``, the pooled means and rates of
    ``scores_from_sums`` (a ratio of pooled sums, not a mean of ratios), and ``kupiec_lr``,
    ``kupiec_p_value`` for the band failures against the expected 20% (null for central-only
    models). The pooled steps of one forecast and same-day forecasts of related instruments are
    not independent, so the Kupiec p-value is optimistic about significance.
    """
    pooled = sums.group_by("model_name", "levels").agg(
        *(_banded(pl.col(c).sum()).alias(c) if c in _BAND_ONLY else pl.col(c).sum() for c in _ADDED),
        pl.col("symbol").n_unique().alias("n_symbols"),
    )
    summary = _means_and_rates(pooled)
    kupiec = [
        kupiec_pof(n, below + above, EXPECTED_BAND_FAIL_RATE) if below is not None else (None, None)
        for n, below, above in summary.select("n", "n_below_p10", "n_above_p90").iter_rows()
    ]
    return summary.select(
        "model_name", "levels", "n", "n_symbols", "pinball_p10", "pinball_p50", "pinball_p90", "mean_pinball",
        "n_below_p10", "n_above_p90", "coverage_p10_p90", "below_p10_rate", "above_p90_rate",
        "scaled_mae", "scaled_rw_mae", "relative_mae",
        pl.Series("kupiec_lr", [k[0] for k in kupiec], dtype=pl.Float64),
        pl.Series("kupiec_p_value", [k[1] for k in kupiec], dtype=pl.Float64),
    ).sort("model_name", "levels")


def scores_by_symbol(sums: pl.DataFrame) -> pl.DataFrame:
    """Per (model_name, symbol), pooling steps and levels: ``n``, ``mean_pinball`` and ``relative_mae``, sorted by symbol."""
    return (
        sums.group_by("model_name", "symbol")
        .agg(pl.col("n").sum(), pl.col("sum_mean_pinball").sum(), pl.col("sum_scaled_abs_error").sum(),
             pl.col("sum_scaled_rw_abs_error").sum())
        .select(
            "model_name", "symbol", "n",
            (pl.col("sum_mean_pinball") / pl.col("n")).alias("mean_pinball"),
            pl.when(pl.col("sum_scaled_rw_abs_error") > 0)
            .then(pl.col("sum_scaled_abs_error") / pl.col("sum_scaled_rw_abs_error"))
            .alias("relative_mae"),
        )
        .sort("symbol", "model_name")
    )
