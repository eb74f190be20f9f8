"""Synthetic but realistic bars, for demos and tests without a data feed.

This module owns the offline market-data source. Each series is generated
from a fixed epoch (daily: 2018-01-01, hourly: 2024-09-01) with a random
generator seeded from a stable hash of (symbol, cadence), so a bar's values
depend only on (symbol, cadence, ts): asking for more history, a later end,
or a different "now" never changes bars already seen. That point-in-time
property is what lets backfills and re-runs reproduce earlier forecasts.

The process: log prices mean-revert slowly (half-life about a year) around a
trending anchor placed at a plausible level for the instrument; returns are
Student-t with volatility clustering (log-volatility is an exponentially
smoothed noise process); OHLC are consistent by construction and volume
rises with the size of the move. Bars exist only at the calendar's bar
closes, so weekends, holidays and half days show up exactly as they would in
real data.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import polars as pl

from forecasting_pipeline.market.calendars import bar_close_array, bar_duration
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.schema import BARS_SCHEMA, TS_DTYPE, BarSource, empty_bars, read_each
from forecasting_pipeline.times import ONE_US, as_utc, epoch_us

logger = logging.getLogger(__name__)

SAMPLE_IS_SYNTHETIC_NOTE = (
    "Synthetic sample bars (forecasting_pipeline.market.sources.sample): a random process with "
    "realistic levels, calendars and volatility clustering, not market prices. Forecasts made "
    "from them demonstrate the pipeline only."
)

SAMPLE_EPOCHS: dict[str, datetime] = {
    "1d": datetime(2018, 1, 1, tzinfo=timezone.utc),
    "1h": datetime(2024, 9, 1, tzinfo=timezone.utc),
}
# The anchor price equals the instrument's reference level on this date.
_REFERENCE_DATE = datetime(2025, 1, 1, tzinfo=timezone.utc)
_SECONDS_PER_YEAR = 365.25 * 24 * 3600


@dataclass(frozen=True)
class _ClassProfile:
    annual_vol: float  # typical annualised volatility of log returns
    drift_range: tuple[float, float]  # range of the anchor's annual log growth
    default_level: tuple[float, float]  # range of levels for symbols not listed below
    daily_volume: float  # typical volume per day, in units traded


_PROFILES: dict[str, _ClassProfile] = {
    "crypto": _ClassProfile(0.70, (0.05, 0.30), (0.5, 500.0), 2.0e6),
    "fx": _ClassProfile(0.08, (-0.03, 0.03), (0.6, 1.6), 1.0e5),
    "commodity": _ClassProfile(0.15, (0.00, 0.08), (20.0, 2000.0), 2.0e5),
    "equity": _ClassProfile(0.30, (0.02, 0.15), (20.0, 400.0), 3.0e7),
    "index": _ClassProfile(0.16, (0.04, 0.09), (1000.0, 20000.0), 2.0e9),
}

# Levels around 2025 for the default universe; other symbols get a level
# drawn from their asset class's range.
_REFERENCE_LEVELS: dict[str, float] = {
    "BTC-USD": 60000.0, "ETH-USD": 3000.0, "SOL-USD": 150.0, "BNB-USD": 580.0, "XRP-USD": 0.6,
    "EURUSD": 1.10, "GBPUSD": 1.27, "USDJPY": 150.0, "AUDUSD": 0.66, "USDCHF": 0.88,
    "USDCAD": 1.36, "XAUUSD": 2400.0,
    "AAPL": 200.0, "MSFT": 420.0, "NVDA": 120.0, "AMZN": 185.0, "GOOGL": 170.0,
    "META": 500.0, "TSLA": 230.0, "JPM": 210.0,
    "SPX": 5000.0, "NDX": 18000.0, "DJI": 39000.0,
}
_REFERENCE_VOLUMES: dict[str, float] = {
    "BTC-USD": 3.0e4, "ETH-USD": 4.0e5, "XRP-USD": 1.5e9,
    "SPX": 2.5e9, "NDX": 9.0e8, "DJI": 3.0e8,
}

# Bars per year, to turn annual volatility into per-bar volatility.
_BARS_PER_YEAR: dict[tuple[str, str], float] = {
    ("24/7", "1h"): 365.25 * 24, ("24/7", "1d"): 365.25,
    ("24/5", "1h"): 260.0 * 24, ("24/5", "1d"): 260.0,
    ("exchange", "1h"): 252.0 * 6.5, ("exchange", "1d"): 252.0,
}
# Trading days per year, to turn bars per year into bars per day.
_TRADING_DAYS_PER_YEAR: dict[str, float] = {"24/7": 365.25, "24/5": 260.0, "exchange": 252.0}


def sample_bars(
    instrument: Instrument,
    cadence: str,
    end: datetime,
    n_bars: int,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The last ``n_bars`` synthetic bars closing at or before ``end``.

    Parameters
    ----------
    instrument : Instrument
        Symbol, asset class and calendar of the series.
    cadence : str
        ``"1h"`` or ``"1d"``.
    end : datetime.datetime
        Latest bar close wanted (inclusive); naive means UTC.
    n_bars : int
        Number of bars wanted, ``>= 1``. Fewer come back when the series
        (which starts at its cadence's epoch) is shorter.
    now : datetime.datetime, optional
        The present; bars closing after it do not exist yet. Defaults to the
        real UTC time.

    Returns
    -------
    polars.DataFrame
        A bars frame (see ``market_data.schema``), at most ``n_bars`` rows,
        every ``ts <= min(end, now)``.
    """
    return sample_history(instrument, cadence, end, end, n_bars, now)


def sample_history(
    instrument: Instrument,
    cadence: str,
    first_end: datetime,
    last_end: datetime,
    n_bars: int,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The last ``n_bars`` synthetic bars at or before ``first_end`` and every bar after it up to ``last_end``.

    See ``sample_bars``; bars closing after ``now`` do not exist yet.
    """
    if cadence not in SAMPLE_EPOCHS:
        raise ValueError(f"{instrument.symbol}: unknown cadence {cadence!r}; expected one of {list(SAMPLE_EPOCHS)}")
    if not isinstance(n_bars, int) or n_bars < 1:
        raise ValueError(f"{instrument.symbol}: n_bars must be a positive integer, got {n_bars!r}")
    present = as_utc(now) if now is not None else datetime.now(timezone.utc)
    limit = min(as_utc(last_end), present)
    epoch = SAMPLE_EPOCHS[cadence]
    if limit <= epoch:
        return empty_bars()
    # The cache is keyed by a horizon year, not by `end`, so repeated calls
    # share one generated series; a later horizon regenerates a longer one
    # whose prefix is identical.
    through_year = max(datetime.now(timezone.utc).year + 1, limit.year)
    ts, columns = _full_series(
        instrument.symbol, instrument.asset_class, instrument.calendar, cadence, through_year
    )
    stop = int(np.searchsorted(ts, epoch_us(limit), side="right"))
    first_stop = int(np.searchsorted(ts, epoch_us(min(as_utc(first_end), present)), side="right"))
    start = max(0, first_stop - n_bars)
    frame = pl.DataFrame(
        [
            pl.Series("ts", ts[start:stop], dtype=pl.Int64).cast(TS_DTYPE),
            *(pl.Series(name, values[start:stop], dtype=pl.Float64) for name, values in columns.items()),
        ]
    )
    return frame.with_columns(pl.lit(instrument.symbol, dtype=pl.Utf8).alias("symbol")).select(
        list(BARS_SCHEMA)
    )


@functools.lru_cache(maxsize=128)
def _full_series(
    symbol: str, asset_class: str, calendar: str, cadence: str, through_year: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every bar from the cadence epoch through the end of ``through_year``.

    Returns the bar closes as int64 microseconds since the Unix epoch, shape
    ``(N,)``, and the five OHLCV arrays, each shape ``(N,)``. Arrays are
    marked read-only because the cache hands out the same objects.
    """
    if asset_class not in _PROFILES:
        raise ValueError(f"{symbol}: unknown asset_class {asset_class!r}; expected one of {list(_PROFILES)}")
    profile = _PROFILES[asset_class]
    horizon = datetime(through_year, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    closes = bar_close_array(calendar, cadence, SAMPLE_EPOCHS[cadence], horizon).astype(np.int64)
    n = len(closes)
    streams, params = _generators(symbol, cadence)

    scale = _bar_scale(profile, calendar, cadence)
    smoothed, sigma = _clustered_volatility(streams[0], n, scale)
    bar_lengths = _bar_lengths(closes, cadence)
    # A short bar (the final part-hour of an exchange session) moves less;
    # variance scales with time. Bars after a pause count as full length.
    sigma = sigma * np.sqrt(np.minimum(bar_lengths, 1.0))
    # Fat-tailed shocks: Student-t with 5 degrees of freedom, unit variance.
    shocks = streams[1].standard_t(5, n) * math.sqrt(3.0 / 5.0) * sigma

    log_close = _log_closes(symbol, profile, closes, shocks, scale.bars_per_year, params)
    log_open = _log_opens(log_close, shocks, sigma, bar_lengths, streams[2])
    log_high, log_low = _log_wicks(log_open, log_close, sigma, streams[3], streams[4])
    log_volume = _log_volumes(symbol, profile, scale, log_open, log_close, smoothed, streams[5], params[2])
    columns = _price_columns(log_open, log_high, log_low, log_close, log_volume)
    for values in (closes, *columns.values()):
        values.flags.writeable = False
    logger.debug("generated %d synthetic %s bars for %s through %d", n, cadence, symbol, through_year)
    return closes, columns


def _generators(symbol: str, cadence: str) -> tuple[list[np.random.Generator], np.ndarray]:
    """Six independent generators, one per random series, and three uniform series parameters.

    Every random quantity has its own generator, and each generator is used
    for exactly one draw: numpy's Generator then guarantees that the first
    k values of a length-N draw equal a length-k draw, which is what makes
    a bar independent of how far the series was generated.
    """
    seed = _stable_seed(symbol, cadence)
    streams = [np.random.Generator(np.random.PCG64([seed, k])) for k in range(6)]
    params = np.random.Generator(np.random.PCG64([seed, 99])).random(3)
    return streams, params


@dataclass(frozen=True)
class _BarScale:
    kind: str  # "24/7", "24/5" or "exchange": which trading week the calendar follows
    bars_per_year: float
    bar_vol: float  # typical volatility of one bar's log return


def _bar_scale(profile: _ClassProfile, calendar: str, cadence: str) -> _BarScale:
    """How many bars a year holds on this calendar and cadence, and how much one bar moves."""
    kind = calendar if calendar in ("24/7", "24/5") else "exchange"
    bars_per_year = _BARS_PER_YEAR[(kind, cadence)]
    return _BarScale(kind, bars_per_year, profile.annual_vol / math.sqrt(bars_per_year))


def _clustered_volatility(stream: np.random.Generator, n: int, scale: _BarScale) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed unit-variance log-volatility noise and the per-bar volatility it drives, each shape ``(n,)``.

    Log-volatility is exponentially smoothed Gaussian noise (an AR(1)),
    rescaled to unit variance, with a memory of about two weeks.
    """
    halflife_bars = 10.0 * scale.bars_per_year / 252.0
    alpha = 1.0 - 0.5 ** (1.0 / halflife_bars)
    # Start from the stationary distribution so the epoch is not special.
    stationary_sd = math.sqrt(alpha / (2.0 - alpha))
    vol_noise = stream.standard_normal(n + 1)
    smoothed = _ewm(vol_noise[1:], alpha, initial=vol_noise[0] * stationary_sd)
    smoothed = smoothed / stationary_sd
    vol_of_vol = 0.45
    return smoothed, scale.bar_vol * np.exp(vol_of_vol * smoothed - 0.5 * vol_of_vol**2)


def _bar_lengths(closes: np.ndarray, cadence: str) -> np.ndarray:
    """Time since the previous bar close, in nominal bars; the first bar counts as one."""
    nominal = bar_duration(cadence) / ONE_US
    spacing = np.diff(closes, prepend=closes[0] - int(nominal))
    return spacing / nominal


def _log_closes(
    symbol: str,
    profile: _ClassProfile,
    closes: np.ndarray,
    shocks: np.ndarray,
    bars_per_year: float,
    params: np.ndarray,
) -> np.ndarray:
    """Log close prices: a slow mean reversion of the shocks around a trending anchor.

    The reversion keeps levels plausible over years without removing
    short-term randomness.
    """
    reversion_alpha = 1.0 - 0.5 ** (1.0 / bars_per_year)
    deviation = _ewm(shocks, reversion_alpha, initial=0.0) / reversion_alpha
    years = (closes - epoch_us(_REFERENCE_DATE)) / 1e6 / _SECONDS_PER_YEAR
    drift = profile.drift_range[0] + (profile.drift_range[1] - profile.drift_range[0]) * params[0]
    level = _REFERENCE_LEVELS.get(symbol)
    if level is None:
        low, high = profile.default_level
        level = math.exp(math.log(low) + (math.log(high) - math.log(low)) * params[1])
    return math.log(level) + drift * years + deviation


def _log_opens(
    log_close: np.ndarray,
    shocks: np.ndarray,
    sigma: np.ndarray,
    bar_lengths: np.ndarray,
    stream: np.random.Generator,
) -> np.ndarray:
    """Log open prices near the previous close.

    The gap is small, and larger after a long pause in trading (overnight,
    weekend) because news arrives meanwhile.
    """
    pause_bars = np.maximum(bar_lengths, 1.0)
    gap_scale = sigma * np.where(pause_bars > 1.5, 0.5 * np.sqrt(np.minimum(pause_bars, 100.0)) / 3.0, 0.1)
    previous = np.concatenate(([log_close[0] - shocks[0]], log_close[:-1]))
    return previous + gap_scale * stream.standard_normal(len(log_close))


def _log_wicks(
    log_open: np.ndarray,
    log_close: np.ndarray,
    sigma: np.ndarray,
    upper_stream: np.random.Generator,
    lower_stream: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Log highs and lows: wicks beyond the body, half-normal with the bar's volatility."""
    n = len(log_close)
    upper = np.abs(upper_stream.standard_normal(n)) * 0.6 * sigma
    lower = np.abs(lower_stream.standard_normal(n)) * 0.6 * sigma
    return np.maximum(log_open, log_close) + upper, np.minimum(log_open, log_close) - lower


def _log_volumes(
    symbol: str,
    profile: _ClassProfile,
    scale: _BarScale,
    log_open: np.ndarray,
    log_close: np.ndarray,
    smoothed: np.ndarray,
    stream: np.random.Generator,
    volume_param: float,
) -> np.ndarray:
    """Log volumes, rising with the size of the move relative to its usual size and with volatility."""
    daily_volume = _REFERENCE_VOLUMES.get(symbol, profile.daily_volume) * (0.5 + volume_param)
    bars_per_day = scale.bars_per_year / _TRADING_DAYS_PER_YEAR[scale.kind]
    move = np.abs(log_close - log_open) / scale.bar_vol
    return (
        math.log(daily_volume / bars_per_day)
        + 0.35 * move
        + 0.3 * stream.standard_normal(len(log_close))
        + 0.4 * smoothed
    )


def _price_columns(
    log_open: np.ndarray, log_high: np.ndarray, log_low: np.ndarray, log_close: np.ndarray, log_volume: np.ndarray
) -> dict[str, np.ndarray]:
    """The OHLCV arrays from their logs, with high and low pinned to bound open and close."""
    columns = {
        "open": np.exp(log_open),
        "high": np.exp(log_high),
        "low": np.exp(log_low),
        "close": np.exp(log_close),
        "volume": np.exp(log_volume),
    }
    # exp() of a max/min equals the max/min of the exp()s mathematically, but
    # rounding can differ in the last bit; pin the invariant exactly.
    columns["high"] = np.maximum(columns["high"], np.maximum(columns["open"], columns["close"]))
    columns["low"] = np.minimum(columns["low"], np.minimum(columns["open"], columns["close"]))
    return columns


def _ewm(values: np.ndarray, alpha: float, initial: float) -> np.ndarray:
    """Causal exponential smoothing ``y[t] = (1 - alpha) y[t-1] + alpha x[t]``, ``y[-1] = initial``.

    Shape ``(n,)`` in, shape ``(n,)`` out; pandas runs the recursion in C.
    """
    padded = np.concatenate(([initial], values.astype(np.float64)))
    return pd.Series(padded).ewm(alpha=alpha, adjust=False).mean().to_numpy(copy=True)[1:]


def _stable_seed(symbol: str, cadence: str) -> int:
    # Python's hash() is salted per process; a digest is the same everywhere.
    digest = hashlib.sha256(f"forecasting_pipeline.sample:{symbol}:{cadence}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SampleSource(BarSource):
    """The synthetic source: every instrument's bars generated on its own calendar."""

    is_synthetic = True

    def describe(self) -> str:
        return SAMPLE_IS_SYNTHETIC_NOTE

    def history(
        self, instruments: Sequence[Instrument], cadence: str, first_end: datetime, last_end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """Every bar the windows ending from ``first_end`` to ``last_end`` read (see ``BarSource``)."""
        return read_each(
            instruments, lambda instrument: sample_history(instrument, cadence, first_end, last_end, n_bars)
        )
