"""The two forecast cadences and their defaults: partitions, context length, horizon, backfill run size.

Context lengths are explicit because Chronos-2 otherwise reads up to 8192 points (about 5x the
cost of 2048). Compute grows linearly with context: 23 series at 2048 take about 13 s on the
2-core CPU, about 6 s at 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

# Chronos-2 decodes up to 64 patches of 16 steps in one pass; beyond that it unrolls
# autoregressively and quality degrades, so longer horizons are refused.
MAX_HORIZON = 1024


@dataclass(frozen=True)
class Cadence:
    name: str
    partitions_def: dg.TimeWindowPartitionsDefinition
    context_length: int
    horizon: int
    windows_per_backfill_run: int
    # forecast_scores_<cadence> scores the forecasts of this many days before its `until`
    # (None: all of them) unless its run config says otherwise.
    scores_lookback_days: int | None = None

    @property
    def timeframe(self) -> str:
        return self.name


HOURLY = Cadence(
    name="1h",
    partitions_def=dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00", timezone="UTC"),
    # 2048 hourly bars: ~12 weeks of crypto, ~14 months of exchange sessions.
    context_length=2048,
    # One trading day of crypto/FX bars ahead.
    horizon=24,
    # 30 days of hourly windows in 6 runs, each loading the model once. A run holds ~0.5 GB of
    # frames; on the GPU its model calls take seconds, on the CPU fallback ~13 s per window.
    windows_per_backfill_run=120,
    # Scoring rereads what it scores: 90 days of hourly forecasts of two models took 26 s and
    # 2.7 GB at peak, growing linearly (benchmarks/scoring_scale.py); all history would not fit
    # beside Kronos within a year. 90 days is about 50,000 forecasts per model.
    scores_lookback_days=90,
)

DAILY = Cadence(
    name="1d",
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC"),
    # 1024 sessions: ~4 years of equities, ~2.8 years of crypto; half the cost of 2048.
    context_length=1024,
    # Two trading weeks ahead.
    horizon=10,
    windows_per_backfill_run=30,
)

CADENCES: dict[str, Cadence] = {c.name: c for c in (HOURLY, DAILY)}


def check_horizon(horizon: int) -> None:
    if not 1 <= horizon <= MAX_HORIZON:
        raise ValueError(f"unsupported horizon {horizon}: Chronos-2 forecasts 1 to {MAX_HORIZON} steps")
