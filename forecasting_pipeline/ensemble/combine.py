"""The combination rule and the calibrated band.

**Quantile averaging.** The median is the location weights' average of every member's p50. The
band is the band weights' level-by-level average of the banded members' p10/p50/p90, moved so that
its centre sits on that median: a point member (Kronos) moves the band's location and never its
width, since its missing band is never averaged in as a band of zero width.

**Calibration (conformal).** Members' bands are not calibrated. From an instrument's own recent
scored occasions, re-combined with the weights of the new forecast, the lower and upper half-widths
are scaled so that about 10% of outcomes fall below p10 and 10% above p90: with ``r_lo = (p50 - y)
/ (p50 - p10)`` over those occasions' steps, ``c_lo`` is its empirical quantile at
``ceil((n + 1) * 0.9) / n`` (split-conformal's finite-sample level), and the new p10 is ``p50 -
c_lo * (p50 - p10)``; likewise above. Each factor is at least 0, so the quantiles stay ordered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TAIL = 0.1
"""Share of outcomes meant to fall below p10, and above p90."""

MIN_HALF_WIDTH = 1e-9
"""Half-widths below this share of the naive scale cannot be rescaled meaningfully and are not used to calibrate."""


@dataclass(frozen=True)
class Band:
    """Combined quantiles, each of one shape: p10 <= p50 <= p90."""

    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray

    @property
    def lower(self) -> np.ndarray:
        return self.p50 - self.p10

    @property
    def upper(self) -> np.ndarray:
        return self.p90 - self.p50


def combine(p50: np.ndarray, location: np.ndarray, bands: np.ndarray, band_weights: np.ndarray) -> Band:
    """The ensemble's quantiles before calibration.

    Parameters
    ----------
    p50
        Members' medians, shape (..., K).
    location
        Location weights, shape (K,), summing to 1.
    bands
        Banded members' p10/p50/p90, shape (..., B, 3), B >= 1.
    band_weights
        Band weights, shape (B,), summing to 1.
    """
    median = p50 @ location
    # Members' quantiles are ordered, so their weighted average is too; sorting guards rounding.
    levels = np.sort(np.einsum("...bl,b->...l", bands, band_weights), axis=-1)
    lower = levels[..., 1] - levels[..., 0]
    upper = levels[..., 2] - levels[..., 1]
    return Band(median - lower, median, median + upper)


@dataclass(frozen=True)
class Calibration:
    """Factors on the lower and upper half-widths, from ``n`` scored steps; 1 and 1 when not applied."""

    lower: float
    upper: float
    n: int
    applied: bool

    def apply(self, band: Band) -> Band:
        return Band(band.p50 - self.lower * band.lower, band.p50, band.p50 + self.upper * band.upper)


NOT_CALIBRATED = Calibration(1.0, 1.0, 0, False)


def conformal_factor(ratios: np.ndarray) -> float:
    """The factor that leaves about ``TAIL`` of the ratios above it, at split-conformal's finite-sample level."""
    n = len(ratios)
    level = min(1.0, math.ceil((n + 1) * (1.0 - TAIL)) / n)
    return max(0.0, float(np.quantile(ratios, level, method="higher")))


def calibrate(band: Band, actual: np.ndarray, scale: np.ndarray) -> Calibration:
    """Factors that make the band of past occasions hold about 80% of their outcomes.

    ``band`` and ``actual`` have shape (n, H), ``scale`` (n,): the re-combined band of the
    scored occasions, their outcomes and naive scales.
    """
    floor = MIN_HALF_WIDTH * scale[:, None]
    lower_ok, upper_ok = band.lower > floor, band.upper > floor
    if not lower_ok.any() or not upper_ok.any():
        return NOT_CALIBRATED
    below = (band.p50 - actual)[lower_ok] / band.lower[lower_ok]
    above = (actual - band.p50)[upper_ok] / band.upper[upper_ok]
    return Calibration(conformal_factor(below), conformal_factor(above), int(actual.size), True)
