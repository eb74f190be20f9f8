"""The two forecast cadences, hourly and daily: bar length and the model's defaults for each.

A cadence's name (``"1h"``, ``"1d"``) is also the ``timeframe`` of its rows in ``ml_predictions``
and of the gateway's API: one concept, spelt ``cadence`` in this code.

Context lengths are explicit because Chronos-2 otherwise reads up to 8192 points, and its cost
grows linearly with the context (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Cadence:
    """One cadence: its name, the nominal length of a bar, the model's context and horizon for it, and its windows.

    ``window_key_format`` is how a window (a Dagster partition) of the cadence is named;
    ``first_window`` and ``windows_per_backfill_run`` are the defaults that FIRST_WINDOW_<NAME>
    and WINDOWS_PER_BACKFILL_RUN_<NAME> override.
    """

    name: str
    bar: timedelta
    context_length: int
    horizon: int
    window_key_format: str
    first_window: str
    # Each backfill run pays one process start-up (about 2 s: Python, Dagster, the definitions, the
    # instance) and one model load, spread over its windows. Its windows share their instruments'
    # bars (WindowFrames), so a window adds about 1 MB of memory, mostly its model inputs: 480
    # windows (20 days hourly, 16 months daily) keep the start-up's share of each window at about
    # 4 ms, for a peak of about 1.1 GB beside the model (docs/performance.md).
    windows_per_backfill_run: int

    def is_window_key(self, key: str) -> bool:
        """Whether ``key`` names a window of this cadence (``2024-01-01`` daily, ``2026-01-01-00:00`` hourly)."""
        try:
            parsed = datetime.strptime(key, self.window_key_format)
        except ValueError:
            return False
        return parsed.strftime(self.window_key_format) == key


HOURLY = Cadence(
    name="1h",
    bar=timedelta(hours=1),
    # About 12 weeks of crypto bars, 14 months of exchange sessions.
    context_length=2048,
    # One trading day of crypto and FX bars ahead.
    horizon=24,
    window_key_format="%Y-%m-%d-%H:%M",
    first_window="2026-01-01-00:00",
    windows_per_backfill_run=480,
)

DAILY = Cadence(
    name="1d",
    bar=timedelta(days=1),
    # About 4 years of equity sessions, 2.8 years of crypto days; half the cost of 2048.
    context_length=1024,
    # Two trading weeks ahead.
    horizon=10,
    window_key_format="%Y-%m-%d",
    first_window="2024-01-01",
    windows_per_backfill_run=480,
)

CADENCES: dict[str, Cadence] = {c.name: c for c in (HOURLY, DAILY)}


def cadence_named(name: str) -> Cadence:
    """The cadence called ``name``; ValueError listing the known ones otherwise."""
    try:
        return CADENCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cadence {name!r}: expected one of {list(CADENCES)}") from None
