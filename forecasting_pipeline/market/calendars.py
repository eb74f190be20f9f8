"""Trading calendars: when each instrument's bars close.

This module owns the mapping from a calendar name and a cadence to the set of
bar-close timestamps. Everything else in the project (sample data, validation,
forecast timestamps) asks this module instead of doing date arithmetic itself.

Calendar names
--------------
``"24/7"``
    Crypto. Hourly bars close on every UTC hour; daily bars close at 00:00 UTC
    every day.
``"24/5"``
    FX and metals. Trading runs from Sunday 17:00 America/New_York to Friday
    17:00 America/New_York. Hourly bars close on each hour boundary inside
    that window; daily bars close at 17:00 America/New_York, Monday to Friday.
any ``exchange_calendars`` code (``"XNYS"``, ``"XNAS"``, ...)
    Exchange hours. Hourly bars close at open+1h, open+2h, ... strictly before
    the session close, plus one final (possibly short) bar at the close; a
    session with a lunch break is treated as two such segments. Daily bars
    close at each session's close.

Cadences are the strings ``"1h"`` and ``"1d"``. All timestamps are tz-aware
UTC ``datetime`` objects; naive inputs are read as UTC, the project-wide
convention.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta, timezone

import exchange_calendars as xcals
import numpy as np
import pandas as pd

from forecasting_pipeline.market.cadences import cadence_named
from forecasting_pipeline.times import checked_utc, datetimes, epoch_us, from_epoch_us

logger = logging.getLogger(__name__)

CALENDAR_24_7 = "24/7"
CALENDAR_24_5 = "24/5"

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_FX_TZ = "America/New_York"
# Exchange calendars are built once over a fixed wide window so that every
# caller sees the same sessions; anything outside it is an error, not a guess.
_EXCHANGE_START = pd.Timestamp("2000-01-01")


def bar_duration(cadence: str) -> timedelta:
    """Nominal length of one bar.

    Parameters
    ----------
    cadence : str
        ``"1h"`` or ``"1d"``.

    Returns
    -------
    datetime.timedelta
        One hour or one day. The last bar of an exchange session may be
        shorter than this.
    """
    return cadence_named(cadence).bar


def validate_calendar_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a calendar this module knows.

    Parameters
    ----------
    name : str
        ``"24/7"``, ``"24/5"`` or an ``exchange_calendars`` code such as
        ``"XNYS"``.
    """
    if not isinstance(name, str) or not (
        name in (CALENDAR_24_7, CALENDAR_24_5) or name in exchange_calendar_names()
    ):
        raise ValueError(
            f"unknown calendar {name!r}: expected '24/7' (crypto), '24/5' (FX/metals) "
            "or an exchange_calendars code such as 'XNYS' or 'XNAS'"
        )


def bar_close_array(calendar: str, cadence: str, start: datetime, end: datetime) -> np.ndarray:
    """Bar closes ``c`` with ``start < c <= end`` as a NumPy array.

    The array form of :func:`bar_closes`, for callers that work on many bars
    at once (sample data, validation) and should not pay for Python objects.

    Parameters
    ----------
    calendar : str
        Calendar name, see the module docstring.
    cadence : str
        ``"1h"`` or ``"1d"``.
    start, end : datetime.datetime
        Exclusive lower and inclusive upper bound; naive means UTC.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, dtype ``datetime64[us]`` holding UTC instants,
        strictly ascending.
    """
    validate_calendar_name(calendar)
    cadence_named(cadence)
    lo = epoch_us(checked_utc(start, "start"))
    hi = epoch_us(checked_utc(end, "end"))
    if hi <= lo:
        return np.empty(0, dtype="datetime64[us]")
    if calendar == CALENDAR_24_7:
        closes = _regular_closes(lo, hi, _US_PER_HOUR if cadence == "1h" else _US_PER_DAY)
    elif calendar == CALENDAR_24_5:
        closes = _fx_hourly_closes(lo, hi) if cadence == "1h" else _fx_daily_closes(lo, hi)
    else:
        closes = _exchange_slice(calendar, cadence, lo, hi)
    return closes.astype("datetime64[us]")


def bar_closes(calendar: str, cadence: str, start: datetime, end: datetime) -> list[datetime]:
    """Every bar close ``c`` with ``start < c <= end``.

    Parameters
    ----------
    calendar : str
        Calendar name, see the module docstring.
    cadence : str
        ``"1h"`` or ``"1d"``.
    start, end : datetime.datetime
        Exclusive lower and inclusive upper bound; naive means UTC.

    Returns
    -------
    list of datetime.datetime
        Tz-aware UTC, ascending. Empty when ``end <= start``.

    Raises
    ------
    ValueError
        Unknown calendar or cadence, or (for exchange calendars) a range
        outside the years the calendar is built for.
    """
    return datetimes(bar_close_array(calendar, cadence, start, end))


def next_bar_closes(calendar: str, cadence: str, after: datetime, n: int) -> list[datetime]:
    """The ``n`` bar closes strictly after ``after``.

    Used to timestamp forecast steps: step ``k`` of a forecast made at the bar
    closing at ``after`` is the ``k``-th element, so weekends and holidays are
    skipped exactly as the calendar skips them.

    Parameters
    ----------
    calendar : str
        Calendar name, see the module docstring.
    cadence : str
        ``"1h"`` or ``"1d"``.
    after : datetime.datetime
        Exclusive lower bound; naive means UTC.
    n : int
        Number of closes wanted, ``n >= 1``.

    Returns
    -------
    list of datetime.datetime
        Length ``n``, tz-aware UTC, ascending.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"next_bar_closes: n must be a positive integer, got {n!r}")
    validate_calendar_name(calendar)
    start = checked_utc(after, "after")
    # Start with a window that fits n bars plus a long weekend and widen it
    # geometrically; exchange calendars have gaps of several days.
    span = bar_duration(cadence) * n * 2 + timedelta(days=5)
    while True:
        closes = bar_close_array(calendar, cadence, start, start + span)
        if len(closes) >= n:
            return datetimes(closes[:n])
        span *= 2


def last_bar_close(calendar: str, cadence: str, at_or_before: datetime) -> datetime:
    """The latest bar close ``c <= at_or_before``.

    Parameters
    ----------
    calendar : str
        Calendar name, see the module docstring.
    cadence : str
        ``"1h"`` or ``"1d"``.
    at_or_before : datetime.datetime
        Inclusive upper bound; naive means UTC.

    Returns
    -------
    datetime.datetime
        Tz-aware UTC.

    Raises
    ------
    ValueError
        When no bar closes at or before ``at_or_before`` within the range the
        calendar covers.
    """
    validate_calendar_name(calendar)
    end = checked_utc(at_or_before, "at_or_before")
    span = bar_duration(cadence) * 2 + timedelta(days=5)
    floor = _calendar_floor(calendar)
    while True:
        start = end - span
        if floor is not None and start < floor:
            start = floor
        closes = bar_close_array(calendar, cadence, start, end)
        if len(closes):
            return datetimes(closes[-1:])[0]
        if floor is not None and start <= floor:
            raise ValueError(
                f"calendar {calendar!r} ({cadence}) has no bar close at or before "
                f"{end.isoformat()}: it starts at {floor.isoformat()}"
            )
        span *= 2


# ---------------------------------------------------------------------------
# helpers


@functools.lru_cache(maxsize=1)
def exchange_calendar_names() -> frozenset[str]:
    """Every exchange code (and alias) that ``exchange_calendars`` knows."""
    return frozenset(xcals.get_calendar_names(include_aliases=True))


def _regular_closes(lo: int, hi: int, step: int) -> np.ndarray:
    """Multiples of ``step`` (in us since the epoch) in ``(lo, hi]``."""
    first = (lo // step + 1) * step
    return np.arange(first, hi + 1, step, dtype=np.int64).astype("datetime64[us]")


def _fx_hourly_closes(lo: int, hi: int) -> np.ndarray:
    closes = _regular_closes(lo, hi, _US_PER_HOUR)
    if not len(closes):
        return closes
    # A bar is inside the week when its opening instant is; New York's UTC
    # offset is a whole number of hours, so UTC hour boundaries are NY ones.
    opens_ny = pd.DatetimeIndex(closes - np.timedelta64(1, "h"), tz="UTC").tz_convert(_FX_TZ)
    weekday = np.asarray(opens_ny.weekday)
    hour = np.asarray(opens_ny.hour)
    closed = (
        ((weekday == 4) & (hour >= 17))
        | (weekday == 5)
        | ((weekday == 6) & (hour < 17))
    )
    return closes[~closed]


def _fx_daily_closes(lo: int, hi: int) -> np.ndarray:
    first_day = np.datetime64(lo, "us").astype("datetime64[D]") - np.timedelta64(1, "D")
    last_day = np.datetime64(hi, "us").astype("datetime64[D]") + np.timedelta64(1, "D")
    days = pd.DatetimeIndex(np.arange(first_day, last_day + np.timedelta64(1, "D")))
    days = days[days.weekday < 5]
    # 17:00 in New York is never inside a DST gap or overlap, so localising
    # is unambiguous.
    closes_utc = (days + pd.Timedelta(hours=17)).tz_localize(_FX_TZ).tz_convert("UTC")
    closes = closes_utc.tz_localize(None).as_unit("us").to_numpy().astype(np.int64)
    keep = (closes > lo) & (closes <= hi)
    return closes[keep].astype("datetime64[us]")


def _exchange_end() -> pd.Timestamp:
    return pd.Timestamp(f"{datetime.now(timezone.utc).year + 2}-12-31")


@functools.lru_cache(maxsize=None)
def _exchange_calendar(name: str) -> xcals.ExchangeCalendar:
    end = _exchange_end()
    try:
        return xcals.get_calendar(name, start=_EXCHANGE_START, end=end)
    except ValueError as wide_error:
        # A few calendars cannot span the standard window (recent exchanges,
        # holidays recorded only a year ahead); fall back to the library's own
        # default range rather than refusing the calendar outright.
        logger.warning(
            "calendar %s cannot be built for %s..%s (%s); using its default range",
            name, _EXCHANGE_START.date(), end.date(), wide_error,
        )
        try:
            return xcals.get_calendar(name)
        except (ValueError, NotImplementedError) as error:
            raise ValueError(f"calendar {name!r} cannot be built by exchange_calendars: {error}") from error
    except NotImplementedError as error:
        raise ValueError(f"calendar {name!r} cannot be built by exchange_calendars: {error}") from error


@functools.lru_cache(maxsize=None)
def _exchange_close_table(name: str, cadence: str) -> np.ndarray:
    """All bar closes of an exchange calendar over its built range, int64 us."""
    cal = _exchange_calendar(name)
    # The *_nanos arrays are plain int64; going through the tz-aware Series
    # would materialise one Timestamp object per session.
    opens = np.asarray(cal.opens_nanos, dtype=np.int64) // 1000
    closes = np.asarray(cal.closes_nanos, dtype=np.int64) // 1000
    if cadence == "1d":
        return closes
    starts = opens
    ends = closes
    break_starts = np.asarray(cal.break_starts_nanos, dtype=np.int64)
    break_ends = np.asarray(cal.break_ends_nanos, dtype=np.int64)
    nat = np.iinfo(np.int64).min
    has_break = (break_starts != nat) & (break_ends != nat)
    if has_break.any():
        # A lunch break splits the session into two segments, each with its
        # own hourly grid and its own short final bar.
        bs = break_starts[has_break] // 1000
        be = break_ends[has_break] // 1000
        starts = np.concatenate([opens[~has_break], opens[has_break], be])
        ends = np.concatenate([closes[~has_break], bs, closes[has_break]])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    counts = -(-(ends - starts) // _US_PER_HOUR)  # ceil: the last bar may be short
    seg_index = np.repeat(np.arange(len(starts)), counts)
    # k-th bar in its segment, 1-based, without a Python loop over sessions.
    offsets = np.arange(len(seg_index)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return np.minimum(starts[seg_index] + offsets * _US_PER_HOUR, ends[seg_index])


def _calendar_floor(calendar: str) -> datetime | None:
    if calendar in (CALENDAR_24_7, CALENDAR_24_5):
        return None
    cal = _exchange_calendar(calendar)
    return cal.first_session.to_pydatetime().replace(tzinfo=timezone.utc)


def _exchange_slice(name: str, cadence: str, lo: int, hi: int) -> np.ndarray:
    cal = _exchange_calendar(name)
    first = int(cal.first_session.value // 1000)
    last = int((cal.last_session + pd.Timedelta(days=1)).value // 1000)
    if lo < first - _US_PER_DAY or hi > last + _US_PER_DAY:
        raise ValueError(
            f"calendar {name!r}: range {from_epoch_us(lo).isoformat()} .. {from_epoch_us(hi).isoformat()} "
            f"is outside the sessions it is built for ({cal.first_session.date()} .. "
            f"{cal.last_session.date()})"
        )
    table = _exchange_close_table(name, cadence)
    i = np.searchsorted(table, lo, side="right")
    j = np.searchsorted(table, hi, side="right")
    return table[i:j].astype("datetime64[us]")


class UpcomingCloses:
    """``next_bar_closes`` for many origins on a few calendars, answered from one array of closes per calendar.

    A backfill asks for the next ``horizon`` closes after every instrument's ``as_of`` in every
    window; the answers are slices of the same few arrays, grown as the origins move forward.
    """

    def __init__(self, cadence: str) -> None:
        self.cadence = cadence
        self._spans: dict[str, tuple[int, int, np.ndarray]] = {}

    def __call__(self, calendar: str, after: datetime, n: int) -> np.ndarray:
        """The ``n`` closes strictly after ``after``, as int64 microseconds since the epoch."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"next closes: n must be a positive integer, got {n!r}")
        start = epoch_us(checked_utc(after, "after"))
        lo, hi, closes = self._spans.get(calendar, (start, start, np.empty(0, dtype=np.int64)))
        i = int(np.searchsorted(closes, start, side="right"))
        if lo <= start and i + n <= len(closes):
            return closes[i:i + n]
        # Cover this origin with room for many later ones; the span of closes (lo, hi] is complete.
        span = epoch_us(checked_utc(after, "after") + (bar_duration(self.cadence) * n * 2 + timedelta(days=5)) * 8) - start
        lo, hi = min(lo, start), max(hi, start + span)
        while True:
            closes = bar_close_array(calendar, self.cadence, from_epoch_us(lo), from_epoch_us(hi)).astype(np.int64)
            i = int(np.searchsorted(closes, start, side="right"))
            if i + n <= len(closes):
                self._spans[calendar] = (lo, hi, closes)
                return closes[i:i + n]
            hi += hi - lo
