"""The two forecast cadences, hourly and daily: bar length and the model's defaults for each.

A cadence's name (``"1h"``, ``"1d"``) is also the ``timeframe`` of its rows in ``ml_predictions``
and of the gateway's API: one concept, spelt ``cadence`` in this code.

Context lengths are explicit because Chronos-2 otherwise reads up to 8192 points, and its cost
grows linearly with the context (README: Performance).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Cadence:
    """One cadence: its name, the nominal length of a bar, and the model's context and horizon for it."""

    name: str
    bar: timedelta
    context_length: int
    horizon: int


HOURLY = Cadence(
    name="1h",
    bar=timedelta(hours=1),
    # About 12 weeks of crypto bars, 14 months of exchange sessions.
    context_length=2048,
    # One trading day of crypto and FX bars ahead.
    horizon=24,
)

DAILY = Cadence(
    name="1d",
    bar=timedelta(days=1),
    # About 4 years of equity sessions, 2.8 years of crypto days; half the cost of 2048.
    context_length=1024,
    # Two trading weeks ahead.
    horizon=10,
)

CADENCES: dict[str, Cadence] = {c.name: c for c in (HOURLY, DAILY)}


def cadence_named(name: str) -> Cadence:
    """The cadence called ``name``; ValueError listing the known ones otherwise."""
    try:
        return CADENCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cadence {name!r}: expected one of {list(CADENCES)}") from None
