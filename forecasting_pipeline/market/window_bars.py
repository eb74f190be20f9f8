"""Bars per forecast window: read from a source, point-in-time, and validated, for one window or a range of them.

A window reads only bars that closed at or before its end, so a window forecast today from a
source that already holds later bars sees what a run at that window saw.

A backfill covers many windows whose contexts overlap almost entirely. Each instrument's bars
are therefore read once for the whole range, and what validation needs of them (bad values,
duplicate timestamps, the calendar's closes, log returns) is computed once. A window's slice
with no bad value and no duplicate is validated from those: the same rule functions as
``validation.validate_instrument``, fed precomputed calendar answers. Any other slice goes
through ``validate_instrument`` itself. Either way a window gets exactly the bars and findings a
run of that window alone would get.

The windows' bars come back as ``WindowFrames``: a clean slice is a range of rows of its
instrument's history, held once for every window; a repaired slice is a block of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from forecasting_pipeline.market.calendars import bar_close_array
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarSource
from forecasting_pipeline.market.sources.schema import NUMERIC_COLUMNS, PRICE_COLUMNS, empty_bars
from forecasting_pipeline.market.validation import (
    EXCLUDED,
    CalendarCloses,
    Finding,
    ValidatedWindow,
    ValidationConfig,
    findings_frame,
    jump_findings,
    nothing_to_forecast,
    sorted_isin,
    span_rules,
    stale_rule,
    validate_instrument,
    without_jumps,
)
from forecasting_pipeline.market.window_frames import Slice, WindowFrames
from forecasting_pipeline.times import epoch_us, from_epoch_us

FINDING_COLUMNS = ("window", "symbol", "ts", "rule", "action", "message")
# Spans whose jumps are decided in one array pass: bounds its memory (rows x span length x 8 bytes, twice).
_JUMP_ROWS_PER_PASS = 256


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
    frames: WindowFrames = field(default_factory=lambda: WindowFrames([], {}, empty_bars()))

    @property
    def bars(self) -> WindowFrames:
        """Window key -> its validated bars (each window's ``ValidatedWindow.bars``), sharing rows between windows."""
        return self.frames

    def excluded_by_rule(self) -> dict[str, dict[str, list[str]]]:
        """Rule -> symbol -> the windows that rule excluded it from (its first excluding rule per window)."""
        out: dict[str, dict[str, list[str]]] = {}
        for window, validated in self.windows.items():
            for symbol in validated.excluded:
                rule = next(f.rule for f in validated.findings_of(symbol) if f.action == EXCLUDED)
                out.setdefault(rule, {}).setdefault(symbol, []).append(window)
        return out


def read_window_bars(
    source: BarSource,
    universe: Sequence[Instrument],
    cadence: str,
    ends: Mapping[str, datetime],
    n_bars: int,
    rules: ValidationConfig,
) -> WindowBars:
    """Read each instrument's bars once for all windows, and validate every instrument of every window."""
    if not ends:
        return WindowBars({}, _findings([]))
    bars, errors = source.history(universe, cadence, min(ends.values()), max(ends.values()), n_bars)
    by_symbol = {symbol: frame for (symbol,), frame in bars.group_by("symbol")} if len(bars) else {}
    histories = {
        i.symbol: _InstrumentHistory.of(i, by_symbol.get(i.symbol, empty_bars()), cadence, max(ends.values()))
        for i in universe if i.symbol not in errors
    }
    ends_us = np.array([epoch_us(end) for end in ends.values()], dtype=np.int64)
    for history in histories.values():
        history.decide_jumps(ends_us, n_bars, rules)
    blocks = _Blocks(histories)
    windows: dict[str, ValidatedWindow] = {}
    slices: dict[str, list[Slice]] = {}
    excluded: dict[str, list[str]] = {}
    empty: dict[str, str] = {}
    for key, end in ends.items():
        validated, slices[key] = _validate(universe, histories, blocks, errors, cadence, end, n_bars, rules)
        windows[key] = validated
        for symbol in validated.excluded:
            excluded.setdefault(symbol, []).append(key)
        reason = nothing_to_forecast(key, validated)
        if reason is not None:
            empty[key] = reason
    frames = WindowFrames(blocks.frames, slices, empty_bars(), by_instrument=True)
    return WindowBars(windows, _findings(list(windows.items())), excluded, empty, frames)


class _Blocks:
    """The blocks of a run's ``WindowFrames``: each instrument's history, then each repaired window slice."""

    def __init__(self, histories: Mapping[str, _InstrumentHistory]) -> None:
        self.frames = [h.bars for h in histories.values()]
        self.of_symbol = {symbol: i for i, symbol in enumerate(histories)}
        self._block_of: dict[int, int] = {}  # id of a repaired frame (held in frames) -> its block

    def slice_of(self, symbol: str, bars: pl.DataFrame, span: tuple[int, int] | None) -> Slice:
        """Where ``bars`` lie: rows ``span`` of the symbol's history, or (repaired) a block of their own."""
        if span is not None:
            return self.of_symbol[symbol], span[0], span[1]
        if id(bars) not in self._block_of:
            self.frames.append(bars)
            self._block_of[id(bars)] = len(self.frames) - 1
        return self._block_of[id(bars)], 0, len(bars)


def _validate(
    universe: Sequence[Instrument],
    histories: Mapping[str, _InstrumentHistory],
    blocks: _Blocks,
    errors: Mapping[str, str],
    cadence: str,
    end: datetime,
    n_bars: int,
    rules: ValidationConfig,
) -> tuple[ValidatedWindow, list[Slice]]:
    """One window, as ``validation.validate_window`` would validate the source's bars for it, and its bars' slices."""
    findings: list[Finding] = []
    kept: dict[str, tuple[pl.DataFrame, Slice]] = {}
    excluded: list[str] = []
    for instrument in universe:
        symbol = instrument.symbol
        if symbol in errors:
            found = [Finding(symbol, None, "unreadable", EXCLUDED, errors[symbol])]
            bars, span = empty_bars(), None
        else:
            bars, found, span = histories[symbol].validate(end, n_bars, cadence, rules)
        findings += found
        if any(f.action == EXCLUDED for f in found):
            excluded.append(symbol)
        else:
            kept[symbol] = bars, blocks.slice_of(symbol, bars, span)
    # Concatenated in symbol order, each slice already in time order: the (symbol, ts) order
    # validate_window sorts into, without copying the slices.
    order = sorted(kept)
    out = pl.concat([kept[s][0] for s in order], rechunk=False) if kept else empty_bars()
    validated = ValidatedWindow(out, findings, excluded, [i.symbol for i in universe if i.symbol in kept])
    return validated, [kept[s][1] for s in order]


def _findings(windows: list[tuple[str, ValidatedWindow]]) -> pl.DataFrame:
    frames = [findings_frame(v.findings).with_columns(pl.lit(k).alias("window")) for k, v in windows]
    found = pl.concat(frames) if frames else findings_frame([]).with_columns(pl.lit(None, pl.Utf8).alias("window"))
    return found.select(FINDING_COLUMNS).sort(pl.col("action") != EXCLUDED, "window", "symbol", maintain_order=True)


class PrecomputedCloses(CalendarCloses):
    """A calendar's closes over ``(lo, hi]``, computed once; questions outside that span go to the calendar."""

    def __init__(self, calendar: str, cadence: str, lo: datetime, hi: datetime) -> None:
        super().__init__(calendar, cadence)
        self._lo, self._hi = epoch_us(lo), epoch_us(hi)
        self._closes = bar_close_array(calendar, cadence, lo, hi)
        self._us = self._closes.astype(np.int64)

    @property
    def us(self) -> np.ndarray:
        """Every close of the span, microseconds since the epoch, ascending."""
        return self._us

    def between(self, start: datetime, end: datetime) -> np.ndarray:
        s, e = epoch_us(start), epoch_us(end)
        if not (self._lo <= s and e <= self._hi):
            return super().between(start, end)
        if e <= s:
            return self._closes[:0]
        return self._closes[np.searchsorted(self._us, s, "right"):np.searchsorted(self._us, e, "right")]

    def last_at_or_before(self, moment: datetime) -> datetime:
        m = epoch_us(moment)
        j = int(np.searchsorted(self._us, m, "right")) if self._lo <= m <= self._hi else 0
        return from_epoch_us(self._us[j - 1]) if j > 0 else super().last_at_or_before(moment)


@dataclass(frozen=True)
class _InstrumentHistory:
    """One instrument's bars over a range of windows, and what validating any window of them needs."""

    instrument: Instrument
    bars: pl.DataFrame
    ts_us: np.ndarray
    # Cumulative counts (length n + 1) of rows with a bad value, and of rows repeating the previous ts.
    bad_before: np.ndarray
    repeat_before: np.ndarray
    log_close: np.ndarray
    closes: CalendarCloses
    in_order: bool
    # With the calendar's closes over the whole history: cumulative counts (length n + 1) of bars off
    # the calendar, and (per expected close, length m + 1) of expected closes with no bar.
    off_before: np.ndarray | None = None
    missing_before: np.ndarray | None = None
    # (a, b) -> findings of rows [a, b) that do not depend on the window's end: the windows of a
    # backfill that end between two bars (a night, a weekend) hold the same rows.
    span_findings: dict[tuple[int, int], list[Finding]] = field(default_factory=dict, compare=False)
    # (a, b) -> the repaired bars of rows [a, b).
    repaired: dict[tuple[int, int], pl.DataFrame] = field(default_factory=dict, compare=False)
    # (a, b, jump_sigma) of spans of finite closes known to hold no jump (``decide_jumps``).
    jump_free: set[tuple[int, int, float]] = field(default_factory=set, compare=False)

    @classmethod
    def of(cls, instrument: Instrument, bars: pl.DataFrame, cadence: str, last_end: datetime) -> _InstrumentHistory:
        ts = bars["ts"]
        in_order = ts.null_count() == 0 and ts.is_sorted()
        ts_us = ts.dt.epoch("us").to_numpy() if in_order else np.zeros(len(bars), dtype=np.int64)
        closes: CalendarCloses = CalendarCloses(instrument.calendar, cadence)
        if in_order and len(bars):
            try:
                closes = PrecomputedCloses(
                    instrument.calendar, cadence, from_epoch_us(ts_us[0]) - timedelta(microseconds=1), last_end
                )
            except ValueError:
                pass  # the calendar cannot place this span: each window asks it and reports why
        with np.errstate(divide="ignore", invalid="ignore"):
            log_close = np.log(bars["close"].to_numpy())
        calendar_counts = {}
        if isinstance(closes, PrecomputedCloses):
            calendar_counts = dict(
                off_before=np.concatenate(([0], np.cumsum(~sorted_isin(ts_us, closes.us)))),
                missing_before=np.concatenate(([0], np.cumsum(~sorted_isin(closes.us, ts_us)))),
            )
        return cls(
            instrument, bars, ts_us,
            np.concatenate(([0], np.cumsum(_bad_values(bars)))),
            np.concatenate(([0, 0], np.cumsum(ts_us[1:] == ts_us[:-1]))) if len(bars) else np.zeros(1, np.int64),
            log_close, closes, in_order, **calendar_counts,
        )

    def validate(
        self, end: datetime, n_bars: int, cadence: str, config: ValidationConfig
    ) -> tuple[pl.DataFrame, list[Finding], tuple[int, int] | None]:
        """The window ending at ``end``: its last ``n_bars`` bars, validated, and (offset, length) in ``bars``
        when they are a slice of it unchanged (None when validation repaired them)."""
        if not self.in_order:
            window = self.bars.filter(pl.col("ts") <= end).tail(n_bars)
            return *validate_instrument(window, self.instrument, cadence, end, config, self.closes), None
        b = int(np.searchsorted(self.ts_us, epoch_us(end), "right"))
        a = max(0, b - n_bars)
        window = self.bars.slice(a, b - a)
        clean = b > a and self.bad_before[b] == self.bad_before[a] and self.repeat_before[b] == self.repeat_before[a + 1]
        if not clean:
            bars, findings = validate_instrument(window, self.instrument, cadence, end, config, self.closes)
            # The same rows repair the same way: windows that hold them share one repaired frame.
            return self.repaired.setdefault((a, b), bars), findings, None
        symbol = self.instrument.symbol
        findings = []
        if b - a < config.min_history_bars:
            findings.append(Finding(symbol, None, "short_history", EXCLUDED,
                                    f"{b - a} bars, fewer than min_history_bars={config.min_history_bars}"))
        # calendar_rules, then the jumps, as validate_instrument orders them.
        actual = self.ts_us[a:b].astype("datetime64[us]")
        stale = stale_rule(actual, self.instrument, cadence, end, config, self.closes)
        findings += stale
        if not (stale and stale[0].ts is None):
            findings += self._span_findings(a, b, window, cadence, config)
        elif b - a >= 3:
            findings += self._jumps(a, b, window, config)
        return window, findings, (a, b - a)

    def _span_findings(self, a: int, b: int, window: pl.DataFrame, cadence: str, config: ValidationConfig) -> list[Finding]:
        """``span_rules`` and the jumps of rows [a, b), computed once per span."""
        if (a, b) not in self.span_findings:
            found = [] if self._on_calendar(a, b) else span_rules(
                self.ts_us[a:b].astype("datetime64[us]"), self.instrument, cadence, config, self.closes
            )
            self.span_findings[a, b] = found + (self._jumps(a, b, window, config) if b - a >= 3 else [])
        return self.span_findings[a, b]

    def _on_calendar(self, a: int, b: int) -> bool:
        """Whether rows [a, b) are calendar closes with none of the calendar's closes between them missing."""
        if self.off_before is None or self.off_before[b] != self.off_before[a]:
            return False
        expected = self.closes.us
        first = int(np.searchsorted(expected, self.ts_us[a], "left"))
        last = int(np.searchsorted(expected, self.ts_us[b - 1], "right"))
        return self.missing_before[last] == self.missing_before[first]

    def decide_jumps(self, ends_us: np.ndarray, n_bars: int, config: ValidationConfig) -> None:
        """Decide for the spans of the windows ending at ``ends_us`` at once which hold no jump.

        A backfill run's windows each need the robust spread of their own span's returns; in one
        array pass per span length that costs a fraction of one pass per window.
        """
        if not self.in_order or len(self.ts_us) < 3:
            return
        b = np.searchsorted(self.ts_us, ends_us, "right")
        a = np.maximum(0, b - n_bars)
        with np.errstate(invalid="ignore"):
            returns = np.diff(self.log_close)  # not finite next to a bad close: such spans are validated alone
        spans = sorted({(int(x), int(y)) for x, y in zip(a, b) if y - x >= 3})
        for length in sorted({y - x for x, y in spans}):
            starts = np.array([x for x, y in spans if y - x == length])
            rows = np.lib.stride_tricks.sliding_window_view(returns, length - 1)
            for chunk in np.array_split(starts, max(1, len(starts) // _JUMP_ROWS_PER_PASS)):
                values = rows[chunk]
                finite = np.isfinite(values).all(axis=1)
                if finite.any():
                    free = without_jumps(values[finite], config)
                    self.jump_free.update((int(x), int(x) + length, config.jump_sigma) for x in chunk[finite][free])

    def _jumps(self, a: int, b: int, window: pl.DataFrame, config: ValidationConfig) -> list[Finding]:
        if (a, b, config.jump_sigma) in self.jump_free:
            return []
        ts = window["ts"]
        return jump_findings(self.instrument.symbol, np.diff(self.log_close[a:b]), lambda i: ts[int(i)], config)


def _bad_values(bars: pl.DataFrame) -> np.ndarray:
    """Rows that ``validation``'s value rules would report: non-finite, non-positive price, inconsistent OHLC,
    negative volume."""
    numeric = pl.col(list(NUMERIC_COLUMNS))
    finite = pl.all_horizontal(numeric.is_not_null() & numeric.is_finite())
    prices = pl.col(list(PRICE_COLUMNS))
    inconsistent = (
        (pl.col("high") < pl.col("low"))
        | (pl.col("open") < pl.col("low")) | (pl.col("open") > pl.col("high"))
        | (pl.col("close") < pl.col("low")) | (pl.col("close") > pl.col("high"))
    )
    bad = ~finite | pl.any_horizontal(prices <= 0) | inconsistent | (pl.col("volume") < 0)
    return bars.select(bad.fill_null(True).alias("bad"))["bad"].to_numpy().astype(np.int64)
