"""The weights: chosen on a small grid over the simplex by the combination's own recent realised loss.

Two weight vectors per forecast:

* **location weights** ``w`` over every member present: the combined median is ``sum_m w_m p50_m``.
  A candidate ``w`` is scored by the scaled absolute error of that combined median (the loss a
  point member has: it has no band);
* **band weights** ``v`` over the members with a band: the band is their level-by-level average
  ``sum_m v_m q_m``. A candidate ``v`` is scored by the scaled pinball loss of that average, over
  the three levels.

Losses are those of ``scoring.losses``: divided by the naive scale at each forecast's ``as_of``
and averaged over the steps of its horizon.

Schemes (``SCHEMES``): ``grid`` picks the grid point with the lowest summed loss, so it can give
a useless member exactly zero; ``inverse`` and ``sqrt-inverse`` weight each member by
``loss**-1`` or ``loss**-0.5`` of its own forecasts (the grid's vertices). Before ``warmup``
scored forecasts of an instrument exist its weights are equal; after, they are its own weights
shrunk toward the weights pooled over every instrument: ``lam * own + (1 - lam) * pooled`` with
``lam = n / (n + shrinkage)``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from forecasting_pipeline.scoring.losses import QUANTILE_LEVELS

GRID_STEP = 0.05
"""Spacing of the simplex grid: 231 candidates for three members, 21 for two."""

SCHEMES = ("grid", "inverse", "sqrt-inverse")
_POWER = {"inverse": 1.0, "sqrt-inverse": 0.5}


@functools.cache
def simplex_grid(k: int, step: float = GRID_STEP) -> np.ndarray:
    """Every weight vector of ``k`` non-negative multiples of ``step`` summing to 1, shape (G, k).

    The vertices (one member alone) come first, in member order, then the rest.
    """
    if k < 1:
        raise ValueError(f"a grid over the simplex needs at least one member, got {k}")
    units = round(1 / step)
    points = [p for p in itertools.product(range(units + 1), repeat=k) if sum(p) == units]
    vertices = [tuple(units if j == i else 0 for j in range(k)) for i in range(k)]
    ordered = vertices + [p for p in points if p not in vertices]
    grid = np.array(ordered, dtype=np.float64) / units
    grid.setflags(write=False)
    return grid


def location_losses(p50: np.ndarray, actual: np.ndarray, scale: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Scaled absolute error of the combined median per occasion and candidate.

    Parameters
    ----------
    p50
        Members' medians, shape (n, H, K).
    actual
        Realised closes, shape (n, H).
    scale
        Naive scale at each occasion's ``as_of``, shape (n,).
    grid
        Candidate weights, shape (G, K).

    Returns
    -------
    numpy.ndarray
        Shape (n, G): the error averaged over the H steps, in naive-scale units.
    """
    combined = p50 @ grid.T
    return np.abs(combined - actual[:, :, None]).mean(axis=1) / scale[:, None]


def band_losses(bands: np.ndarray, actual: np.ndarray, scale: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Scaled pinball loss of the level-by-level average per occasion and candidate.

    ``bands`` has shape (n, H, B, 3) (levels p10, p50, p90), ``grid`` (G, B). Returns (n, G): the
    loss averaged over the three levels and the H steps, in naive-scale units.
    """
    combined = np.einsum("nhbl,gb->nhgl", bands, grid)
    error = actual[:, :, None, None] - combined
    tau = np.asarray(QUANTILE_LEVELS)
    pinball = np.maximum(tau * error, (tau - 1.0) * error)
    return pinball.mean(axis=(1, 3)) / scale[:, None]


@dataclass(frozen=True)
class LossSums:
    """Losses of each candidate summed over ``n`` scored forecasts."""

    sums: np.ndarray
    n: int

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(self.sums + other.sums, self.n + other.n)

    def member_losses(self, k: int) -> np.ndarray:
        """Each member's own mean loss (the grid's vertices), shape (k,); NaN without forecasts."""
        return self.sums[:k] / self.n if self.n else np.full(k, np.nan)


def choose(losses: LossSums, grid: np.ndarray, scheme: str) -> np.ndarray:
    """The weights ``scheme`` gives for these summed losses, shape (K,)."""
    if scheme == "grid":
        # Ties keep the first candidate: a lone member before a mixture that does no better.
        return grid[int(np.argmin(losses.sums))].copy()
    if scheme not in _POWER:
        raise ValueError(f"unknown weighting scheme {scheme!r}: expected one of {SCHEMES}")
    own = np.maximum(losses.member_losses(grid.shape[1]), 1e-12)
    raw = own ** -_POWER[scheme]
    return raw / raw.sum()


@dataclass(frozen=True)
class Blend:
    """Weights of one forecast and how they came about.

    Attributes
    ----------
    weights
        Final weights, shape (K,).
    own, pooled
        The instrument's own choice and the pooled one (None during the warm-up).
    shrink
        The own weights' share ``n / (n + shrinkage)``; 0 during the warm-up.
    warm_up
        True while the instrument has fewer than ``warmup`` scored forecasts: equal weights.
    """

    weights: np.ndarray
    own: np.ndarray | None
    pooled: np.ndarray | None
    shrink: float
    warm_up: bool


def blend(own: LossSums, pooled: LossSums, grid: np.ndarray, scheme: str, warmup: int, shrinkage: float) -> Blend:
    """Equal weights before ``warmup`` scored forecasts; then own weights shrunk toward pooled ones."""
    k = grid.shape[1]
    if own.n < warmup:
        return Blend(np.full(k, 1.0 / k), None, None, 0.0, True)
    mine, everyone = choose(own, grid, scheme), choose(pooled, grid, scheme)
    share = own.n / (own.n + shrinkage)
    return Blend(share * mine + (1.0 - share) * everyone, mine, everyone, share, False)
