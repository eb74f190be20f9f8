"""Validation of each instrument's bars before the model sees them: rules, findings and what each rule does.

This module owns the bad-data rules. ``validate_window`` takes one window's bars (all instruments,
as a market-data source returns them) and gives back the bars the model may use, every finding,
and the instruments excluded from that window. One instrument's bad data never removes another.

Each finding names the instrument, the bar (its close time, or None when the rule is about the
whole series), the rule and the action taken. Actions, per rule:

=====================  =========================================================  ==========
rule                   condition                                                  action
=====================  =========================================================  ==========
``unreadable``         the source could not read the instrument (file unreadable,  excluded
                       missing columns, wrong types)
``missing``            no bars at or before the window end                         excluded
``out_of_order``       timestamps not ascending                                    repaired (sorted)
``duplicate_ts``       several bars at one timestamp, all identical                repaired (one kept)
``duplicate_ts``       several bars at one timestamp that differ                   excluded
``non_finite``         a null, NaN or infinite open/high/low/close/volume or ts    excluded
``non_positive_price`` open, high, low or close <= 0                               excluded
``ohlc_inconsistent``  high < low, or open or close outside [low, high]            excluded
``negative_volume``    volume < 0                                                  excluded
``short_history``      fewer bars than ``min_history_bars``                        excluded
``stale``              more than ``max_stale_bars`` calendar closes between the    excluded
                       last bar and the window end
``calendar_gap``       calendar closes with no bar (one finding per run of them)   warned
``calendar_gap``       more than ``max_missing_fraction`` of the closes missing    excluded
``off_calendar``       bars at times that are not closes of the calendar           warned
``jump``               a close-to-close log return beyond ``jump_sigma`` robust    warned
                       standard deviations
=====================  =========================================================  ==========

Why: a repair is made only where it loses nothing (identical duplicates, order). Values that are
wrong exclude the instrument for the window rather than being patched, because a forecast from
silently patched prices is worse than none, and its previous forecast stays in the table. Gaps
and jumps are warnings: markets do close unexpectedly and do move violently, and the model should
see what happened; too many gaps mean the feed is broken and exclude. Staleness excludes because
the forecast's ``as_of`` is its last bar: a stale series would be stored as a fresh forecast from
an old point. With ``max_stale_bars = 0`` the ``as_of`` of every kept instrument is the calendar's
last close at or before the window end, so a re-run of a window always writes the same keys.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from forecasting_pipeline.market.calendars import bar_close_array, last_bar_close
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.schema import (
    BARS_SCHEMA,
    NUMERIC_COLUMNS,
    PRICE_COLUMNS,
    empty_bars,
)
from forecasting_pipeline.times import as_utc, datetimes

logger = logging.getLogger(__name__)

REPAIRED = "repaired"
WARNED = "warned"
EXCLUDED = "excluded"

RULES: tuple[str, ...] = (
    "unreadable", "missing", "out_of_order", "duplicate_ts", "non_finite", "non_positive_price",
    "ohlc_inconsistent", "negative_volume", "short_history", "stale", "calendar_gap", "off_calendar", "jump",
)

FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8(),
    "ts": pl.Datetime("us", "UTC"),
    "rule": pl.Utf8(),
    "action": pl.Utf8(),
    "message": pl.Utf8(),
}

_CHECK_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# 1 / Phi^-1(0.75): scales a median absolute deviation to a normal standard deviation.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the validation rules.

    Attributes
    ----------
    min_history_bars : int
        Fewest bars an instrument may have (64): below that Chronos-2 has too little context to
        read a trend or a volatility level.
    jump_sigma : float
        A close-to-close log return beyond this many robust standard deviations (1.4826 x MAD of
        the instrument's own returns in the window) is reported (20). Financial returns are fat
        tailed, so the threshold is far above what a normal law would suggest.
    max_missing_fraction : float
        Share of the calendar's closes between the first and the last bar that may be missing
        before the instrument is excluded (0.10).
    max_stale_bars : int
        Calendar closes after the last bar, up to the window end, that may be missing (0: the
        last bar must be the calendar's last close at or before the window end).
    max_findings_per_rule : int
        Findings listed per instrument and rule (20); beyond that one finding summarises the rest.
    """

    min_history_bars: int = 64
    jump_sigma: float = 20.0
    max_missing_fraction: float = 0.10
    max_stale_bars: int = 0
    max_findings_per_rule: int = 20

    def __post_init__(self) -> None:
        if self.min_history_bars < 1:
            raise ValueError(f"min_history_bars must be >= 1, got {self.min_history_bars}")
        if not self.jump_sigma > 0:
            raise ValueError(f"jump_sigma must be > 0, got {self.jump_sigma}")
        if not 0 <= self.max_missing_fraction <= 1:
            raise ValueError(f"max_missing_fraction must be within [0, 1], got {self.max_missing_fraction}")
        if self.max_stale_bars < 0:
            raise ValueError(f"max_stale_bars must be >= 0, got {self.max_stale_bars}")
        if self.max_findings_per_rule < 1:
            raise ValueError(f"max_findings_per_rule must be >= 1, got {self.max_findings_per_rule}")


@dataclass(frozen=True)
class Finding:
    """One thing validation found: which instrument, which bar (None: the whole series), which rule, what was done."""

    symbol: str
    ts: datetime | None
    rule: str
    action: str
    message: str


@dataclass(frozen=True)
class ValidatedWindow:
    """One window after validation.

    Attributes
    ----------
    bars : polars.DataFrame
        Bars frame (``market_data.schema``) of the kept instruments only, repaired, sorted by
        symbol then ts.
    findings : list of Finding
        Every finding, in universe order.
    excluded : list of str
        Symbols excluded from this window, in universe order.
    kept : list of str
        Symbols whose bars go to the model, in universe order.
    """

    bars: pl.DataFrame
    findings: list[Finding] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def findings_of(self, symbol: str) -> list[Finding]:
        return [f for f in self.findings if f.symbol == symbol]


class AllInstrumentsExcludedError(ValueError):
    """Every instrument of a window was excluded: there is nothing to forecast."""


def check_name(symbol: str) -> str:
    """The per-instrument asset check name, ``bars_valid_<SYMBOL>`` with non-word characters as ``_``."""
    return "bars_valid_" + _CHECK_NAME_UNSAFE.sub("_", symbol)


def check_names(symbols: Iterable[str]) -> dict[str, str]:
    """Symbol -> check name for a universe; refuses two symbols that would share a check name."""
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for symbol in symbols:
        name = check_name(symbol)
        if name in owner:
            raise ValueError(f"symbols {owner[name]!r} and {symbol!r} would share the asset check name {name!r}")
        owner[name] = symbol
        names[symbol] = name
    return names


def validate_window(
    bars: pl.DataFrame,
    instruments: Sequence[Instrument],
    cadence: str,
    window_end: datetime,
    config: ValidationConfig | None = None,
    source_errors: Mapping[str, str] | None = None,
) -> ValidatedWindow:
    """Validate every instrument of one window.

    Parameters
    ----------
    bars : polars.DataFrame
        Bars frame of any number of instruments, as a source returns it (bars closed at or
        before ``window_end``).
    instruments : sequence of Instrument
        The window's universe; an instrument with no bars is excluded (rule ``missing``).
    cadence : str
        ``"1h"`` or ``"1d"``.
    window_end : datetime.datetime
        End of the window (UTC); the stale rule measures the last bar against it.
    config : ValidationConfig, optional
        Thresholds; the documented defaults when omitted.
    source_errors : mapping of str to str, optional
        Symbol -> why the source could not read it; each becomes an ``unreadable`` exclusion.

    Returns
    -------
    ValidatedWindow
    """
    config = config or ValidationConfig()
    source_errors = dict(source_errors or {})
    findings: list[Finding] = []
    kept_frames: list[pl.DataFrame] = []
    kept: list[str] = []
    excluded: list[str] = []
    by_symbol = {symbol: frame for (symbol,), frame in bars.group_by("symbol")} if len(bars) else {}
    for instrument in instruments:
        symbol = instrument.symbol
        if symbol in source_errors:
            found = [Finding(symbol, None, "unreadable", EXCLUDED, source_errors[symbol])]
            repaired = empty_bars()
        else:
            repaired, found = validate_instrument(
                by_symbol.get(symbol, empty_bars()), instrument, cadence, window_end, config
            )
        findings += found
        if any(f.action == EXCLUDED for f in found):
            excluded.append(symbol)
        else:
            kept.append(symbol)
            kept_frames.append(repaired)
    out = pl.concat(kept_frames).sort("symbol", "ts") if kept_frames else empty_bars()
    return ValidatedWindow(out, findings, excluded, kept)


def nothing_to_forecast(window: str, validated: ValidatedWindow) -> str | None:
    """Why ``window`` has nothing to forecast (each instrument's first exclusion), or None when some are kept."""
    if validated.kept:
        return None
    reasons = []
    for symbol in validated.excluded:
        first = next(f for f in validated.findings_of(symbol) if f.action == EXCLUDED)
        reasons.append(f"{symbol}: {first.rule}: {first.message}")
    return (
        f"window {window}: every instrument ({len(validated.excluded)}) was excluded by bar validation, "
        "so nothing is forecast or written. " + "; ".join(reasons)
    )


class CalendarCloses:
    """An instrument calendar's bar closes, asked of ``market.calendars`` each time."""

    def __init__(self, calendar: str, cadence: str) -> None:
        self.calendar, self.cadence = calendar, cadence

    def between(self, start: datetime, end: datetime) -> np.ndarray:
        """Closes ``c`` with ``start < c <= end`` (``datetime64[us]``); ValueError outside the calendar's range."""
        return bar_close_array(self.calendar, self.cadence, start, end)

    def last_at_or_before(self, moment: datetime) -> datetime:
        return last_bar_close(self.calendar, self.cadence, moment)


def validate_instrument(
    bars: pl.DataFrame,
    instrument: Instrument,
    cadence: str,
    window_end: datetime,
    config: ValidationConfig | None = None,
    closes: CalendarCloses | None = None,
) -> tuple[pl.DataFrame, list[Finding]]:
    """Validate one instrument's bars.

    ``closes`` answers calendar questions; a caller validating many windows of one instrument
    passes one that has them precomputed (``window_bars``), with the same answers.

    Returns
    -------
    bars, findings
        The repaired bars (sorted, identical duplicates dropped) and every finding. The
        instrument is excluded when any finding's action is ``"excluded"``.
    """
    config = config or ValidationConfig()
    closes = closes or CalendarCloses(instrument.calendar, cadence)
    symbol = instrument.symbol
    end = as_utc(window_end)
    bars = bars.select(list(BARS_SCHEMA))
    if bars.is_empty():
        return bars, [Finding(symbol, None, "missing", EXCLUDED, f"no {cadence} bars at or before {end.isoformat()}")]

    findings: list[Finding] = []
    null_ts = bars.filter(pl.col("ts").is_null())
    if len(null_ts):
        findings.append(Finding(symbol, None, "non_finite", EXCLUDED, f"{len(null_ts)} bar(s) without a timestamp"))
        bars = bars.filter(pl.col("ts").is_not_null())

    ts = bars["ts"]
    if len(ts) > 1 and not ts.is_sorted():
        first_bad = _first_out_of_order(ts)
        findings.append(Finding(symbol, first_bad, "out_of_order", REPAIRED,
                                "timestamps not ascending; bars sorted by close time"))
        bars = bars.sort("ts", maintain_order=True)

    bars, dup_findings = _duplicates(bars, symbol, config)
    findings += dup_findings
    findings += _value_rules(bars, symbol, config)

    if len(bars) < config.min_history_bars:
        findings.append(Finding(symbol, None, "short_history", EXCLUDED,
                                f"{len(bars)} bars, fewer than min_history_bars={config.min_history_bars}"))
    if len(bars):
        findings += calendar_rules(close_times(bars), instrument, cadence, end, config, closes)
        findings += _jumps(bars, symbol, config)
    return bars, findings


def findings_frame(findings: Sequence[Finding]) -> pl.DataFrame:
    """Findings as a frame with columns symbol, ts, rule, action, message."""
    return pl.DataFrame(
        {
            "symbol": [f.symbol for f in findings],
            "ts": [f.ts for f in findings],
            "rule": [f.rule for f in findings],
            "action": [f.action for f in findings],
            "message": [f.message for f in findings],
        },
        schema=FINDINGS_SCHEMA,
    )


# ---------------------------------------------------------------------------
# rules


def _duplicates(bars: pl.DataFrame, symbol: str, config: ValidationConfig) -> tuple[pl.DataFrame, list[Finding]]:
    counts = bars.group_by("ts").len().filter(pl.col("len") > 1).sort("ts")
    if counts.is_empty():
        return bars, []
    findings = []
    # Identical rows collapse to one; NaN == NaN here, which is what "the same row" means.
    distinct = bars.unique(maintain_order=True)
    conflicting = distinct.group_by("ts").len().filter(pl.col("len") > 1).sort("ts")["ts"].to_list()
    conflicting_set = set(conflicting)
    repaired_ts = [t for t in counts["ts"].to_list() if t not in conflicting_set]
    for t in _capped(repaired_ts, config):
        n = counts.filter(pl.col("ts") == t)["len"][0]
        findings.append(Finding(symbol, t, "duplicate_ts", REPAIRED, f"{n} identical bars at one timestamp; one kept"))
    findings += _summary(symbol, "duplicate_ts", REPAIRED, repaired_ts, config, "identical duplicates dropped")
    for t in _capped(conflicting, config):
        findings.append(Finding(symbol, t, "duplicate_ts", EXCLUDED,
                                "several bars with different values at one timestamp; cannot tell which is right"))
    findings += _summary(symbol, "duplicate_ts", EXCLUDED, conflicting, config, "conflicting duplicates")
    return distinct, findings


def _value_rules(bars: pl.DataFrame, symbol: str, config: ValidationConfig) -> list[Finding]:
    numeric = pl.col(list(NUMERIC_COLUMNS))
    finite = pl.all_horizontal(numeric.is_not_null() & numeric.is_finite())
    prices = pl.col(list(PRICE_COLUMNS))
    rules = [
        ("non_finite", ~finite, "a null, NaN or infinite value in open/high/low/close/volume"),
        ("non_positive_price", finite & pl.any_horizontal(prices <= 0), "a price <= 0"),
        (
            "ohlc_inconsistent",
            finite
            & (
                (pl.col("high") < pl.col("low"))
                | (pl.col("open") < pl.col("low")) | (pl.col("open") > pl.col("high"))
                | (pl.col("close") < pl.col("low")) | (pl.col("close") > pl.col("high"))
            ),
            "high < low, or open or close outside [low, high]",
        ),
        ("negative_volume", finite & (pl.col("volume") < 0), "volume < 0"),
    ]
    findings = []
    for rule, condition, what in rules:
        bad = bars.filter(condition)
        if bad.is_empty():
            continue
        for row in bad.head(config.max_findings_per_rule).iter_rows(named=True):
            values = ", ".join(f"{c}={row[c]!r}" for c in NUMERIC_COLUMNS)
            findings.append(Finding(symbol, row["ts"], rule, EXCLUDED, f"{what}: {values}"))
        findings += _summary(symbol, rule, EXCLUDED, bad["ts"].to_list(), config, what)
    return findings


def calendar_rules(
    actual: np.ndarray,
    instrument: Instrument,
    cadence: str,
    end: datetime,
    config: ValidationConfig,
    closes: CalendarCloses,
) -> list[Finding]:
    """Staleness, off-calendar bars and calendar gaps of one instrument's bar closes.

    ``actual``: the close times (``datetime64[us]``, UTC), ascending, at least one.
    """
    stale = stale_rule(actual, instrument, cadence, end, config, closes)
    if stale and stale[0].ts is None:  # the calendar could not place the end: nothing else is checked
        return stale
    return stale + span_rules(actual, instrument, cadence, config, closes)


def stale_rule(
    actual: np.ndarray, instrument: Instrument, cadence: str, end: datetime, config: ValidationConfig,
    closes: CalendarCloses,
) -> list[Finding]:
    """The staleness part of ``calendar_rules``: it alone depends on the window's end, not only on its bars."""
    last = datetimes(actual[-1:])[0]
    try:
        expected_last = closes.last_at_or_before(end)
        behind = len(closes.between(last, end))
    except ValueError as error:
        return [Finding(instrument.symbol, None, "stale", EXCLUDED,
                        f"the {instrument.calendar} calendar cannot place the window end: {error}")]
    return _stale(instrument, cadence, end, config, last, expected_last, behind)


def span_rules(
    actual: np.ndarray, instrument: Instrument, cadence: str, config: ValidationConfig, closes: CalendarCloses
) -> list[Finding]:
    """Off-calendar bars and calendar gaps: the part of ``calendar_rules`` that depends on the bars alone."""
    first, last = datetimes(actual[:1])[0], datetimes(actual[-1:])[0]
    try:
        expected = closes.between(first - timedelta(microseconds=1), last)
    except ValueError as error:
        return [Finding(instrument.symbol, None, "calendar_gap", WARNED, f"gaps not checked: {error}")]
    return _off_calendar(instrument, cadence, actual, expected) + _calendar_gaps(instrument, config, actual, expected)


def _stale(
    instrument: Instrument,
    cadence: str,
    end: datetime,
    config: ValidationConfig,
    last: datetime,
    expected_last: datetime,
    behind: int,
) -> list[Finding]:
    """An exclusion when more than ``max_stale_bars`` calendar closes follow the last bar up to ``end``."""
    if behind <= config.max_stale_bars:
        return []
    return [Finding(
        instrument.symbol, last, "stale", EXCLUDED,
        f"last bar closed at {last.isoformat()}, but the {instrument.calendar} calendar's last {cadence} close at "
        f"or before the window end {end.isoformat()} is {expected_last.isoformat()}: {behind} bar(s) missing "
        f"(max_stale_bars={config.max_stale_bars})",
    )]


def _off_calendar(instrument: Instrument, cadence: str, actual: np.ndarray, expected: np.ndarray) -> list[Finding]:
    """One warning counting the bars whose close is not one of the calendar's ``expected`` closes."""
    off = actual[~sorted_isin(actual, expected)]
    if not len(off):
        return []
    off_ts = datetimes(off)
    return [Finding(
        instrument.symbol, off_ts[0], "off_calendar", WARNED,
        f"{len(off)} bar(s) at times that are not {cadence} closes of the {instrument.calendar} calendar, "
        f"first {off_ts[0].isoformat()}",
    )]


def _calendar_gaps(
    instrument: Instrument, config: ValidationConfig, actual: np.ndarray, expected: np.ndarray
) -> list[Finding]:
    """A warning per run of ``expected`` closes missing from ``actual``, and an exclusion when too many are."""
    missing_mask = ~sorted_isin(expected, actual)
    if not missing_mask.any():
        return []
    symbol = instrument.symbol
    gaps = []
    for start, stop in _runs(missing_mask):
        run = datetimes(expected[start:stop])
        gaps.append(Finding(
            symbol, run[0], "calendar_gap", WARNED,
            f"{len(run)} bar(s) missing from {run[0].isoformat()} to {run[-1].isoformat()}; "
            f"the {instrument.calendar} calendar expects them",
        ))
    findings = _capped(gaps, config)
    findings += _summary(symbol, "calendar_gap", WARNED, [g.ts for g in gaps], config, "gaps")
    n_missing, n_expected = int(missing_mask.sum()), len(expected)
    if n_missing > config.max_missing_fraction * n_expected:
        findings.append(Finding(
            symbol, None, "calendar_gap", EXCLUDED,
            f"{n_missing} of {n_expected} expected bars missing ({n_missing / n_expected:.1%}), more than "
            f"max_missing_fraction={config.max_missing_fraction:.0%}",
        ))
    return findings


def close_times(bars: pl.DataFrame) -> np.ndarray:
    """A bars frame's ``ts`` as ``datetime64[us]`` UTC instants."""
    return bars["ts"].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")


def sorted_isin(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_pool)`` for an ascending pool, by binary search instead of hashing both."""
    if not len(sorted_pool):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return sorted_pool[at] == values


def _jumps(bars: pl.DataFrame, symbol: str, config: ValidationConfig) -> list[Finding]:
    usable = bars.filter(pl.col("close").is_finite() & (pl.col("close") > 0))
    if len(usable) < 3:
        return []
    ts = usable["ts"]
    return jump_findings(symbol, np.diff(np.log(usable["close"].to_numpy())), lambda i: ts[int(i)], config)


def without_jumps(returns: np.ndarray, config: ValidationConfig) -> np.ndarray:
    """For each row of a 2-D array of log returns, whether ``jump_findings`` finds nothing in it.

    The same statistics as ``jump_findings``, row by row in one pass: the windows of a backfill
    run are decided together, and only those with a jump are examined one at a time.
    """
    if returns.ndim != 2 or returns.shape[1] == 0:
        raise ValueError(f"expected a 2-D array of returns with at least one column, got shape {returns.shape}")
    deviation = np.abs(returns - np.median(returns, axis=1, keepdims=True))
    sigma = _MAD_TO_SIGMA * np.median(deviation, axis=1)
    flat = sigma == 0.0
    if flat.any():
        sigma[flat] = np.std(returns[flat], axis=1)
    usable = (sigma != 0.0) & np.isfinite(sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        jumps = (deviation / sigma[:, None] > config.jump_sigma).any(axis=1)
    return ~(usable & jumps)


def jump_findings(
    symbol: str, returns: np.ndarray, ts_at: Callable[[int], datetime], config: ValidationConfig
) -> list[Finding]:
    """Jumps among close-to-close log ``returns``; ``ts_at(i)`` is the close time of the i-th usable bar."""
    deviation = np.abs(returns - np.median(returns))
    sigma = _MAD_TO_SIGMA * float(np.median(deviation))
    if sigma == 0.0:
        # A mostly flat series (a pegged or illiquid quote): fall back to the plain deviation.
        sigma = float(np.std(returns))
    if sigma == 0.0 or not math.isfinite(sigma):
        return []
    score = deviation / sigma
    hits = np.flatnonzero(score > config.jump_sigma)
    findings = []
    for i in hits[: config.max_findings_per_rule]:
        findings.append(Finding(
            symbol, ts_at(i + 1), "jump", WARNED,
            f"close moved {math.expm1(returns[i]):+.2%} since {ts_at(i).isoformat()}: {score[i]:.1f} robust "
            f"standard deviations (jump_sigma={config.jump_sigma:g})",
        ))
    findings += _summary(symbol, "jump", WARNED, [ts_at(i + 1) for i in hits], config, "jumps")
    return findings


# ---------------------------------------------------------------------------
# helpers


def _capped(items: list, config: ValidationConfig) -> list:
    return items[: config.max_findings_per_rule]


def _summary(symbol: str, rule: str, action: str, items: list, config: ValidationConfig, what: str) -> list[Finding]:
    extra = len(items) - config.max_findings_per_rule
    if extra <= 0:
        return []
    return [Finding(symbol, None, rule, action, f"... and {extra} more ({what}; {len(items)} in all)")]


def _first_out_of_order(ts: pl.Series) -> datetime:
    values = ts.to_list()
    for previous, current in zip(values, values[1:]):
        if current < previous:
            return current
    return values[0]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


