"""The bars frame: column names, dtypes, and typing of raw input into it.

A bars frame is a polars DataFrame with ``symbol`` (Utf8), ``ts``
(Datetime("us", "UTC"), the instant the bar closed) and ``open``, ``high``,
``low``, ``close``, ``volume`` (Float64), sorted by ``ts`` ascending. Every
market-data source returns this shape. This module only types data: whether
the bars are sane (gaps, OHLC order, duplicates) is the validation module's
question, so nothing here drops or repairs rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import polars as pl

if TYPE_CHECKING:
    from forecasting_pipeline.market.instruments import Instrument

logger = logging.getLogger(__name__)

BAR_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
NUMERIC_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
TS_DTYPE = pl.Datetime("us", "UTC")
BARS_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.Utf8(),
    "ts": TS_DTYPE,
    **{column: pl.Float64() for column in NUMERIC_COLUMNS},
}


def empty_bars() -> pl.DataFrame:
    """A bars frame with no rows and the full schema."""
    return pl.DataFrame(schema=BARS_SCHEMA)


def coerce_bars(df: pl.DataFrame, symbol: str, origin: str) -> pl.DataFrame:
    """Type raw bars for one symbol into a bars frame.

    Parameters
    ----------
    df : polars.DataFrame
        Raw bars with at least the columns ``BAR_COLUMNS``. ``ts`` may be a
        datetime (naive means UTC; other zones are converted) or ISO 8601
        strings. Numeric columns may be any type castable to Float64,
        including numeric strings. A ``symbol`` column, if present, must hold
        only ``symbol``. Other columns are not carried over.
    symbol : str
        Symbol the bars belong to.
    origin : str
        Where the data came from (a file path, a table name), for messages.

    Returns
    -------
    polars.DataFrame
        Columns ``symbol, ts, open, high, low, close, volume`` with
        ``BARS_SCHEMA`` dtypes, same rows as ``df``, sorted by ``ts``
        (stable, so duplicate timestamps keep their input order; null
        timestamps, if any, go last).

    Raises
    ------
    ValueError
        Missing columns, a value that cannot be typed (the message names the
        column and shows a sample), or a ``symbol`` column holding another
        symbol.
    """
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{origin}: {symbol}: expected a polars DataFrame, got {type(df).__name__}")
    missing = [column for column in BAR_COLUMNS if column not in df.columns]
    if missing:
        raise ValueError(f"{origin}: {symbol}: missing columns {missing} (have {df.columns})")

    if "symbol" in df.columns:
        others = df.get_column("symbol").cast(pl.Utf8, strict=False).unique().drop_nulls().to_list()
        others = [value for value in others if value != symbol]
        if others:
            raise ValueError(
                f"{origin}: {symbol}: 'symbol' column holds other symbols {sorted(others)[:5]}"
            )

    columns = [_coerce_ts(df.get_column("ts"), symbol, origin)]
    for column in NUMERIC_COLUMNS:
        columns.append(_coerce_float(df.get_column(column), symbol, origin))
    typed = pl.DataFrame(columns).with_columns(pl.lit(symbol, dtype=pl.Utf8).alias("symbol"))
    return typed.select(list(BARS_SCHEMA)).sort("ts", maintain_order=True, nulls_last=True)


def _coerce_float(series: pl.Series, symbol: str, origin: str) -> pl.Series:
    name = series.name
    if series.dtype == pl.Float64:
        return series
    if series.dtype == pl.Utf8:
        # Surrounding blanks are common in hand-written CSV and are not data.
        series = series.str.strip_chars()
    converted = series.cast(pl.Float64, strict=False)
    bad = series.filter(converted.is_null() & series.is_not_null())
    if len(bad):
        raise ValueError(
            f"{origin}: {symbol}: column {name!r} ({series.dtype}) has {len(bad)} values that are not "
            f"numbers, e.g. {bad[0]!r}"
        )
    return converted


def _coerce_ts(series: pl.Series, symbol: str, origin: str) -> pl.Series:
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            series = series.dt.replace_time_zone("UTC")
        elif dtype.time_zone != "UTC":
            series = series.dt.convert_time_zone("UTC")
        return series.dt.cast_time_unit("us")
    if dtype == pl.Utf8:
        stripped = series.str.strip_chars()
        try:
            return stripped.str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
        except pl.exceptions.PolarsError:
            pass
        # The format inferred from the first value did not fit them all; tell
        # the user which value is the first that polars cannot read.
        parsed = stripped.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
        bad = series.filter(parsed.is_null() & series.is_not_null())
        sample = bad[0] if len(bad) else series.drop_nulls()[0]
        raise ValueError(
            f"{origin}: {symbol}: column 'ts' has values that are not ISO 8601 timestamps "
            f"(or mixes formats), e.g. {sample!r}"
        )
    if dtype == pl.Null:
        return series.cast(TS_DTYPE)
    raise ValueError(
        f"{origin}: {symbol}: column 'ts' has dtype {dtype}; expected a datetime (the bar close "
        "instant, naive means UTC) or ISO 8601 strings"
    )


def read_each(
    instruments: Sequence[Instrument], read: Callable[[Instrument], pl.DataFrame]
) -> tuple[pl.DataFrame, dict[str, str]]:
    """``read`` every instrument; one that cannot be read is reported by symbol and never hides the others.

    Returns
    -------
    bars, errors
        The bars of every instrument that could be read, and for each one that could not
        (unreadable file, missing columns, wrong types), the reason.
    """
    frames, errors = [], {}
    for instrument in instruments:
        try:
            frames.append(read(instrument))
        except (OSError, ValueError) as exc:
            errors[instrument.symbol] = str(exc)
    return (pl.concat(frames) if frames else empty_bars()), errors


class BarSource(Protocol):
    """Where bars come from. Reads return the readable instruments' bars and, per unreadable one, why."""

    is_synthetic: bool

    def describe(self) -> str:
        """Where the bars come from, for metadata (never a secret)."""
        ...

    def bars(
        self, instruments: Sequence[Instrument], cadence: str, end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """The last ``n_bars`` bars closed at or before ``end`` for each instrument.

        One window is the case ``first_end == last_end`` of ``history``; a source that subclasses
        ``BarSource`` inherits this and writes ``history`` only.
        """
        return self.history(instruments, cadence, end, end, n_bars)

    def history(
        self, instruments: Sequence[Instrument], cadence: str, first_end: datetime, last_end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """Every bar a window ending between ``first_end`` and ``last_end`` can read, in one pass per instrument.

        That is, per instrument: the last ``n_bars`` bars closed at or before ``first_end`` and every
        bar closed after it up to ``last_end``, in the order ``bars`` returns them; so the window
        ending at ``e`` reads exactly the last ``n_bars`` of these closed at or before ``e``.
        """
        ...
