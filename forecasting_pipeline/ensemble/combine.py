"""The combination rule: quantile averaging, and the point member's shift.

The median is the location weights' average of every member's p50. The band is the band weights'
level-by-level average of the banded members' p10/p50/p90, moved so that its centre sits on that
median: a point member (Kronos) moves the band's location and never its width, since its missing
band is never averaged in as a band of zero width. The band is then calibrated (``calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
