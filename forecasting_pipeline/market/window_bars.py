"""Bars per forecast window: read from a source, point-in-time, and validated, for one window or a range of them.

A window reads only bars that closed at or before its end, so a window forecast today from a
source that already holds later bars sees what a run at that window saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.market.validation import (
    EXCLUDED,
    ValidatedWindow,
    ValidationConfig,
    findings_frame,
    nothing_to_forecast,
    validate_window,
)

FINDING_COLUMNS = ("window", "symbol", "ts", "rule", "action", "message")


@dataclass(frozen=True)
class WindowBars:
    """Validated bars of each window, what validation found, and the windows left with nothing to forecast.

    Attributes
    ----------
    windows
        Window key -> its validation (kept bars, findings, excluded and kept symbols).
    findings
        Every finding of every window: ``FINDING_COLUMNS``, exclusions first.
    excluded
        Symbol -> the windows it was excluded from.
    empty
        Window -> why nothing is left to forecast in it (every instrument excluded).
    """

    windows: dict[str, ValidatedWindow]
    findings: pl.DataFrame
    excluded: dict[str, list[str]] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)

    @property
    def bars(self) -> dict[str, pl.DataFrame]:
        return {key: validated.bars for key, validated in self.windows.items()}

    def exclusion_messages(self) -> list[str]:
        """One line per excluded instrument and window, naming each rule that excluded it."""
        return [
            f"{window}: {symbol} excluded: "
            + "; ".join(f"{f.rule}: {f.message}" for f in validated.findings_of(symbol) if f.action == EXCLUDED)
            for window, validated in self.windows.items()
            for symbol in validated.excluded
        ]


def read_window_bars(
    source: BarSource,
    universe: Sequence[Instrument],
    cadence: str,
    ends: Mapping[str, datetime],
    n_bars: int,
    rules: ValidationConfig,
) -> WindowBars:
    """Read the last ``n_bars`` bars at or before each window's end, and validate every instrument of every window."""
    windows: dict[str, ValidatedWindow] = {}
    findings: list[pl.DataFrame] = []
    excluded: dict[str, list[str]] = {}
    empty: dict[str, str] = {}
    for key, end in ends.items():
        bars, errors = source.bars(universe, cadence, end, n_bars)
        validated = validate_window(bars, universe, cadence, end, rules, source_errors=errors)
        windows[key] = validated
        findings.append(findings_frame(validated.findings).with_columns(pl.lit(key).alias("window")))
        for symbol in validated.excluded:
            excluded.setdefault(symbol, []).append(key)
        reason = nothing_to_forecast(key, validated)
        if reason is not None:
            empty[key] = reason
    found = pl.concat(findings).select(FINDING_COLUMNS) if findings else pl.DataFrame(
        schema={"window": pl.Utf8, **findings_frame([]).schema}
    ).select(FINDING_COLUMNS)
    return WindowBars(windows, found.sort(pl.col("action") != EXCLUDED, "window", "symbol"), excluded, empty)
