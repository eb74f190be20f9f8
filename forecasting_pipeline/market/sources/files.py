"""Bars read from local files: one Parquet or CSV file per cadence and symbol.

This module owns the on-disk layout ``{root}/{cadence}/{symbol}.parquet``
(or ``.csv``) and turns such files into bars frames. Files hold the columns
``ts, open, high, low, close, volume`` (a ``symbol`` column is optional);
``ts`` is the bar close, as a datetime or ISO 8601 text, naive meaning UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import polars as pl

from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.market.instruments import SYMBOL_PATTERN, Instrument
from forecasting_pipeline.market.sources.schema import BarSource, coerce_bars, read_each
from forecasting_pipeline.times import as_utc

logger = logging.getLogger(__name__)

BAR_FILE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")


def find_bar_file(root: Path | str, cadence: str, symbol: str) -> Path:
    """Locate the bar file for one symbol and cadence.

    Parameters
    ----------
    root : pathlib.Path or str
        Directory holding one sub-directory per cadence.
    cadence : str
        ``"1h"`` or ``"1d"``.
    symbol : str
        Instrument symbol; it is the file's stem.

    Returns
    -------
    pathlib.Path
        ``{root}/{cadence}/{symbol}.parquet`` if it exists, else the ``.csv``.

    Raises
    ------
    ValueError
        Unknown cadence, or a symbol that could not be a file name of this
        layout (it would escape ``root``).
    FileNotFoundError
        Neither file exists; the message lists the paths tried.
    """
    if cadence not in CADENCES:
        raise ValueError(f"{symbol}: unknown cadence {cadence!r}; expected one of {list(CADENCES)}")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"symbol {symbol!r} does not match {SYMBOL_PATTERN.pattern}; refusing to build a path from it")
    directory = Path(root) / cadence
    tried = [directory / f"{symbol}{suffix}" for suffix in BAR_FILE_SUFFIXES]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{symbol}: no {cadence} bar file; tried {[str(path) for path in tried]}")


def read_bar_file(path: Path | str, symbol: str) -> pl.DataFrame:
    """Read one bar file into a bars frame.

    Parameters
    ----------
    path : pathlib.Path or str
        A ``.parquet`` or ``.csv`` file.
    symbol : str
        Symbol the file holds.

    Returns
    -------
    polars.DataFrame
        A bars frame (see ``market_data.schema.coerce_bars``), every row of
        the file, sorted by ``ts``.

    Raises
    ------
    ValueError
        Unsupported suffix, a file that cannot be read or parsed (the message
        names the path and the reason), or contents that cannot be typed.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            raw = pl.read_parquet(file)
        elif suffix == ".csv":
            # Everything as text: coerce_bars then reports a bad value by
            # column and example instead of a parser offset.
            raw = pl.read_csv(file, infer_schema=False)
        else:
            raise ValueError(f"{file}: {symbol}: unsupported bar file type {suffix!r}; expected .parquet or .csv")
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ValueError(f"{file}: {symbol}: cannot read bar file: {type(error).__name__}: {error}") from error
    logger.debug("read %d rows for %s from %s", raw.height, symbol, file)
    return coerce_bars(raw, symbol, origin=str(file))


def read_bars_from_files(
    root: Path | str, cadence: str, symbol: str, end: datetime, n_bars: int
) -> pl.DataFrame:
    """The last ``n_bars`` bars of a symbol closing at or before ``end``.

    Parameters
    ----------
    root : pathlib.Path or str
        Directory holding ``{cadence}/{symbol}.parquet`` or ``.csv``.
    cadence : str
        ``"1h"`` or ``"1d"``.
    symbol : str
        Instrument symbol.
    end : datetime.datetime
        Latest bar close wanted, inclusive; naive means UTC.
    n_bars : int
        Number of bars wanted, ``>= 1``; fewer come back if the file is
        shorter.

    Returns
    -------
    polars.DataFrame
        A bars frame with at most ``n_bars`` rows. Rows with a null ``ts``
        are kept out because they cannot be placed before ``end``.
    """
    return read_history_from_files(root, cadence, symbol, end, end, n_bars)


def read_history_from_files(
    root: Path | str, cadence: str, symbol: str, first_end: datetime, last_end: datetime, n_bars: int
) -> pl.DataFrame:
    """The last ``n_bars`` bars at or before ``first_end`` and every bar after it up to ``last_end``, in file order
    sorted by ``ts`` (see ``read_bars_from_files``)."""
    if not isinstance(n_bars, int) or n_bars < 1:
        raise ValueError(f"{symbol}: n_bars must be a positive integer, got {n_bars!r}")
    bars = read_bar_file(find_bar_file(root, cadence, symbol), symbol).filter(pl.col("ts") <= as_utc(last_end))
    before_first = bars.filter(pl.col("ts") <= as_utc(first_end)).height
    return bars.slice(max(0, before_first - n_bars))


class FileSource(BarSource):
    """Bars from ``{root}/{cadence}/{SYMBOL}.parquet|csv`` files."""

    is_synthetic = False

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"files under {self.root}"

    def history(
        self, instruments: Sequence[Instrument], cadence: str, first_end: datetime, last_end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """Every bar the windows ending from ``first_end`` to ``last_end`` read, each file read once (``BarSource``)."""
        return read_each(
            instruments,
            lambda instrument: read_history_from_files(self.root, cadence, instrument.symbol, first_end, last_end, n_bars),
        )
