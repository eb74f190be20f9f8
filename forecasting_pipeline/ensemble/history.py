"""Members' past forecasts with their outcomes, as arrays per instrument, cut point-in-time.

A past origin is *scored* once its whole horizon is realised: every step has a bar at its
``ts``. Its ``realised_at`` is the close of its last step, and only origins realised at or before
a new forecast's ``as_of`` may inform that forecast's weights and band. Each occasion's losses are
divided by the naive scale at its own ``as_of`` (``scoring.baselines``), so nothing after
``as_of`` enters them.

Every look back is also bounded in bars (a *floor*: an occasion counts only if its ``as_of`` is
at or after a given bar close), so that what a forecast reads never depends on how much history
a run happened to load: with sparse member forecasts, "the last 120 occasions" alone could reach
further back in a backfill than in a run of one window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from forecasting_pipeline.ensemble.members import BANDED_MEMBERS, LEVELS, MEMBERS, MemberForecasts, column
from forecasting_pipeline.ensemble.weights import LossSums, band_losses, location_losses, simplex_grid
from forecasting_pipeline.scoring.baselines import attach_history
from forecasting_pipeline.scoring.frames import check_bars
from forecasting_pipeline.storage.ml_predictions import KRONOS_MODEL_NAME

_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class MemberHistory:
    """One instrument's scored occasions at which every member of ``members`` forecast, by ``realised_at``.

    Arrays: ``realised_at`` and ``as_of`` (n,) epoch microseconds, both ascending; ``p50`` (n, H, K) of
    ``members``; ``bands`` (n, H, B, 3) of ``banded``; ``actual`` (n, H); ``scale`` (n,).
    ``location`` and ``band`` hold cumulative sums over occasions of the per-occasion grid losses
    (shape (n + 1, G)), so the losses over any run of occasions cost one subtraction.
    """

    members: tuple[str, ...]
    banded: tuple[str, ...]
    realised_at: np.ndarray
    as_of: np.ndarray
    p50: np.ndarray
    bands: np.ndarray
    actual: np.ndarray
    scale: np.ndarray
    location: np.ndarray = field(repr=False)
    band: np.ndarray = field(repr=False)

    def realised_by(self, cutoff: int) -> int:
        """How many occasions were realised at or before ``cutoff`` (epoch microseconds): they come first."""
        return int(np.searchsorted(self.realised_at, cutoff, side="right"))

    def span(self, cutoff: int, lookback: int, floor: int) -> slice:
        """The last ``lookback`` occasions realised at or before ``cutoff`` whose ``as_of`` is at or after ``floor``."""
        end = self.realised_by(cutoff)
        start = max(end - lookback, int(np.searchsorted(self.as_of, floor, side="left")))
        return slice(min(start, end), end)

    def sums(self, span: slice) -> tuple[LossSums, LossSums]:
        """Location and band losses of every candidate, summed over the occasions of ``span``."""
        n = span.stop - span.start
        return (
            LossSums(self.location[span.stop] - self.location[span.start], n),
            LossSums(self.band[span.stop] - self.band[span.start], n),
        )


@dataclass(frozen=True)
class SymbolOutcomes:
    """Every scored past origin of one instrument: outcomes and each member's forecast (NaN where missing)."""

    realised_at: np.ndarray
    as_of: np.ndarray
    actual: np.ndarray
    scale: np.ndarray
    values: dict[str, np.ndarray]
    kronos_written: np.ndarray
    _histories: dict[tuple[str, ...], MemberHistory] = field(default_factory=dict, repr=False)

    def history(self, members: tuple[str, ...]) -> MemberHistory:
        """The occasions at which all of ``members`` forecast (cached per member set)."""
        if members not in self._histories:
            self._histories[members] = self._build(members)
        return self._histories[members]

    def _build(self, members: tuple[str, ...]) -> MemberHistory:
        banded = tuple(m for m in members if m in BANDED_MEMBERS)
        keep = np.ones(len(self.realised_at), dtype=bool)
        for m in members:
            levels = LEVELS if m in banded else ("p50",)
            keep &= np.all([np.isfinite(self.values[column(m, lv)]).all(axis=1) for lv in levels], axis=0)
        if KRONOS_MODEL_NAME in members:
            # A Kronos row written after the horizon it forecasts closed is a hindcast, never a forecast.
            keep &= self.kronos_written <= self.realised_at
        p50 = np.stack([self.values[column(m, "p50")][keep] for m in members], axis=-1)
        bands = np.stack(
            [np.stack([self.values[column(m, lv)][keep] for lv in LEVELS], axis=-1) for m in banded], axis=-2
        ) if banded else np.empty((int(keep.sum()), self.actual.shape[1], 0, 3))
        actual, scale = self.actual[keep], self.scale[keep]
        location = location_losses(p50, actual, scale, simplex_grid(len(members)))
        band = band_losses(bands, actual, scale, simplex_grid(len(banded))) if banded else np.zeros((len(actual), 1))
        return MemberHistory(
            members, banded, self.realised_at[keep], self.as_of[keep], p50, bands, actual, scale,
            np.vstack([np.zeros((1, location.shape[1])), np.cumsum(location, axis=0)]),
            np.vstack([np.zeros((1, band.shape[1])), np.cumsum(band, axis=0)]),
        )


def scored_outcomes(members: MemberForecasts, bars: pl.DataFrame, vol_window: int) -> dict[str, SymbolOutcomes]:
    """Per instrument, the origins of ``members`` whose whole horizon has a bar, with outcomes and scales.

    ``bars`` may reach past the forecasts being made: each occasion carries its ``realised_at``
    and a consumer keeps those realised by its own ``as_of``.
    """
    clean = check_bars(bars)
    steps = members.steps.join(clean.rename({"close": "actual"}), on=["symbol", "ts"], how="left")
    horizon = int(steps["step"].max()) if steps.height else 0
    origins = steps.group_by("symbol", "as_of").agg(
        pl.col("actual").count().alias("_realised"), pl.col("ts").max().alias("realised_at")
    )
    scales = attach_history(origins.select("symbol", "as_of"), clean, vol_window).select("symbol", "as_of", "naive_scale")
    scored = (
        origins.join(scales, on=["symbol", "as_of"])
        .filter((pl.col("_realised") == horizon) & pl.col("naive_scale").is_not_null())
        .join(members.kronos_written, on=["symbol", "as_of"], how="left")
    )
    steps = steps.join(scored.select("symbol", "as_of", "realised_at"), on=["symbol", "as_of"], how="inner")
    out = {}
    for (symbol,), frame in steps.sort("symbol", "realised_at", "as_of", "step").partition_by(
        "symbol", as_dict=True, maintain_order=True
    ).items():
        meta = scored.filter(pl.col("symbol") == symbol).sort("realised_at", "as_of")
        n = meta.height

        def grid_of(name: str) -> np.ndarray:
            return frame[name].cast(pl.Float64).fill_null(np.nan).to_numpy().reshape(n, horizon)

        out[symbol] = SymbolOutcomes(
            realised_at=meta["realised_at"].dt.epoch("us").to_numpy(),
            as_of=meta["as_of"].dt.epoch("us").to_numpy(),
            actual=grid_of("actual"),
            scale=meta["naive_scale"].to_numpy(),
            values={column(m, lv): grid_of(column(m, lv)) for m in MEMBERS for lv in LEVELS},
            kronos_written=meta["created_at"].dt.epoch("us").fill_null(_NEVER).to_numpy(),
        )
    return out
