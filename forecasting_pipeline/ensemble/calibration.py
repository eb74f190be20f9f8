"""The band's calibration: factors on the combined band's half-widths so that about 80% of outcomes fall inside.

Members' bands are not calibrated, so the combined band is rescaled: the new ``p10 = p50 - c_lo *
(p50 - p10)`` and ``p90 = p50 + c_hi * (p90 - p50)``, with factors ``c >= 0`` (the quantiles stay
ordered). A factor comes from *scores*, ``r_lo = (p50 - y) / (p50 - p10)`` and ``r_hi = (y - p50)
/ (p90 - p50)`` of past forecasts: ``c_lo`` is right when about ``TAIL`` of the scores exceed it.

Two schemes (``BAND_SCHEMES``):

* ``adaptive`` (the default). Scores are **out of sample**: each past occasion's band is the one
  the ensemble would have made at that occasion's own ``as_of``, with the weights that the
  occasions realised by then gave it, so no score comes from a forecast that fitted the weights it
  is scored with. Factors are kept **per horizon group** (``horizon_groups``: the steps split into
  contiguous groups on a log scale) and side. The factor starts as split conformal's quantile of
  the older calibration occasions' scores, and is then **tracked online** over the newer ones in
  the order they were realised: quantile tracking, the proportional part of the conformal PID
  controller (Angelopoulos, Candès & Tibshirani 2023), on the log of the factor,
  ``log c <- log c + gamma * (miss - TAIL)``, where ``miss`` is the share of the group's steps of
  that occasion beyond the factor that was in force at its ``as_of``. A run of misses widens the
  band within a few occasions; calm shrinks it slowly. The state is recomputed from the stored
  forecasts and bars on every run, over a span fixed relative to the forecast's ``as_of``, so a
  window gives the same band on schedule, in a backfill, or when re-run.
* ``recent`` (the former rule, kept for comparison): one pair of factors pooled over every step,
  from the recent span that also chose the weights, re-combined with the new weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from forecasting_pipeline.ensemble.combine import Band

TAIL = 0.1
"""Share of outcomes meant to fall below p10, and above p90."""

MIN_HALF_WIDTH = 1e-9
"""Half-widths below this share of the naive scale cannot be rescaled meaningfully and are not used to calibrate."""

MIN_FACTOR = 1e-3
"""The tracked factor's floor: a factor of 0 could never grow again on a log scale."""

BAND_SCHEMES = ("adaptive", "recent")

MAX_BAND_GAMMA = 2.0
"""Beyond this, one occasion could move a factor more than sevenfold: a mistyped setting, not a tuning."""


@dataclass(frozen=True)
class Calibration:
    """Factors on the lower and upper half-widths per step, shape (H,); ones when not applied.

    ``occasions``: scored past forecasts behind the factors; ``tracked``: how many of them moved
    the factors online (0 for ``recent``); ``groups``: the steps (1-based) of each horizon group.
    """

    lower: np.ndarray
    upper: np.ndarray
    occasions: int
    tracked: int
    applied: bool
    groups: tuple[tuple[int, ...], ...]

    def apply(self, band: Band) -> Band:
        return Band(band.p50 - self.lower * band.lower, band.p50, band.p50 + self.upper * band.upper)

    def describe(self) -> dict[str, object]:
        """The factors per horizon group, for the forecast's explanation."""
        return {
            "applied": self.applied, "occasions": self.occasions, "tracked": self.tracked,
            "groups": [{"steps": f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]),
                        "lower": round(float(self.lower[g[0] - 1]), 6), "upper": round(float(self.upper[g[0] - 1]), 6)}
                       for g in self.groups],
        }


def not_calibrated(horizon: int, groups: tuple[tuple[int, ...], ...]) -> Calibration:
    return Calibration(np.ones(horizon), np.ones(horizon), 0, 0, False, groups)


def horizon_groups(horizon: int, count: int) -> tuple[tuple[int, ...], ...]:
    """Steps 1..``horizon`` split into up to ``count`` contiguous groups, edges spaced on a log scale.

    Errors grow fastest over the first steps, so early groups are short: 10 steps in 3 groups are
    1-2, 3-4, 5-10; 24 steps are 1-2, 3-8, 9-24. ``count >= horizon`` gives one group per step.
    """
    if horizon < 1 or count < 1:
        raise ValueError(f"need a horizon and a group count of at least 1, got {horizon} and {count}")
    if count >= horizon:
        return tuple((h,) for h in range(1, horizon + 1))
    edges = sorted({min(horizon, max(1, math.floor(horizon ** (i / count) + 1e-9))) for i in range(1, count)})
    groups, first = [], 1
    for edge in [*edges, horizon]:
        if edge >= first:
            groups.append(tuple(range(first, edge + 1)))
            first = edge + 1
    return tuple(groups)


def conformal_factor(ratios: np.ndarray) -> float:
    """The factor that leaves about ``TAIL`` of the ratios above it, at split-conformal's finite-sample level."""
    n = len(ratios)
    level = min(1.0, math.ceil((n + 1) * (1.0 - TAIL)) / n)
    return max(0.0, float(np.quantile(ratios, level, method="higher")))


@dataclass(frozen=True)
class Scores:
    """Scores of past occasions, shape (n, H) each side; NaN where the half-width is too small to rescale.

    ``usable`` (n,): occasions whose band can calibrate others (the adaptive scheme leaves out
    those made with warm-up weights: equal weights are not the procedure being calibrated).
    """

    lower: np.ndarray
    upper: np.ndarray
    usable: np.ndarray


def band_scores(band: Band, actual: np.ndarray, scale: np.ndarray, usable: np.ndarray | None = None) -> Scores:
    """The scores of bands of shape (n, H) against their outcomes (n, H), with naive scales (n,)."""
    floor = MIN_HALF_WIDTH * scale[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(band.lower > floor, (band.p50 - actual) / band.lower, np.nan)
        upper = np.where(band.upper > floor, (actual - band.p50) / band.upper, np.nan)
    return Scores(lower, upper, np.ones(len(actual), dtype=bool) if usable is None else usable)


def calibrate_recent(band: Band, actual: np.ndarray, scale: np.ndarray,
                     groups: tuple[tuple[int, ...], ...]) -> Calibration:
    """The ``recent`` scheme: one pair of factors over every step of these occasions' bands (n, H)."""
    horizon = actual.shape[1]
    scores = band_scores(band, actual, scale)
    below, above = scores.lower[np.isfinite(scores.lower)], scores.upper[np.isfinite(scores.upper)]
    if not below.size or not above.size:
        return not_calibrated(horizon, groups)
    return Calibration(np.full(horizon, conformal_factor(below)), np.full(horizon, conformal_factor(above)),
                       len(actual), 0, True, groups)


def calibrate_adaptive(scores: Scores, realised_at: np.ndarray, as_of: np.ndarray, occasions: np.ndarray,
                       base: int, groups: tuple[tuple[int, ...], ...], gamma: float) -> Calibration:
    """The ``adaptive`` scheme from the out-of-sample scores of ``occasions`` (indices, in realised order).

    The first ``base`` occasions give each group's starting factors (split conformal), and the
    rest move them online (``gamma`` per occasion on the log scale; 0 keeps them).
    ``realised_at`` and ``as_of`` (epoch microseconds) are the history's, indexed like ``scores``.
    """
    horizon = scores.lower.shape[1]
    side_scores = np.stack([scores.lower[occasions], scores.upper[occasions]])  # (2, n, H)
    member = np.zeros((horizon, len(groups)))
    for g, steps in enumerate(groups):
        member[np.asarray(steps) - 1, g] = 1.0
    log_factor = np.empty((2, len(groups)))
    for side in range(2):
        for g, steps in enumerate(groups):
            ratios = side_scores[side, :base, np.asarray(steps) - 1].ravel()
            ratios = ratios[np.isfinite(ratios)]
            if not ratios.size:
                return not_calibrated(horizon, groups)
            log_factor[side, g] = math.log(max(conformal_factor(ratios), MIN_FACTOR))
    tracked = occasions[base:]
    if len(tracked) and gamma:
        log_factor = _track(side_scores[:, base:], realised_at[tracked], as_of[tracked], log_factor, member, gamma)
    factors = np.exp(log_factor) @ member.T  # (2, H): each step takes its group's factor
    return Calibration(factors[0], factors[1], len(occasions), len(tracked), True, groups)


def _track(scores: np.ndarray, realised_at: np.ndarray, as_of: np.ndarray, log_factor: np.ndarray,
           member: np.ndarray, gamma: float) -> np.ndarray:
    """Quantile tracking over occasions in realised order; each is judged by the factor in force at its ``as_of``.

    ``scores`` (2, n, H), ``member`` (H, G) one-hot step-to-group; returns the final log factors (2, G).
    """
    # In force at an occasion's as_of: the state after the occasions realised by then (0: the start).
    in_force = np.searchsorted(realised_at, as_of, side="right")
    states = [log_factor]
    finite = np.isfinite(scores)
    counted = finite.astype(float) @ member  # (2, n, G)
    for k in range(scores.shape[1]):
        step_factor = np.exp(states[in_force[k]]) @ member.T  # (2, H)
        beyond = (finite[:, k] & (scores[:, k] > step_factor)).astype(float) @ member  # (2, G)
        with np.errstate(invalid="ignore"):
            miss = np.where(counted[:, k] > 0, beyond / counted[:, k], TAIL)
        states.append(states[-1] + gamma * (miss - TAIL))
    return states[-1]
