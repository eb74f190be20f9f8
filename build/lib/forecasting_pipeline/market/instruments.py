"""The instrument universe: which symbols are forecast, and on which calendar.

This module owns the ``Instrument`` record and the YAML file that lists the
universe. The shipped ``instruments.yaml`` is the default demo universe of 23
instruments; users point the pipeline at their own copy to change it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from forecasting_pipeline.market.calendars import validate_calendar_name

logger = logging.getLogger(__name__)

ASSET_CLASSES: tuple[str, ...] = ("crypto", "fx", "equity", "index", "commodity")
# Symbols also name bar files and appear in SQL parameters, so they are kept
# to a conservative alphabet: no path separators, no spaces, no quotes.
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$")
DEFAULT_INSTRUMENTS_FILE: Path = Path(__file__).with_name("instruments.yaml")

_FIELDS: tuple[str, ...] = ("symbol", "asset_class", "calendar")


@dataclass(frozen=True)
class Instrument:
    """One forecast instrument.

    Attributes
    ----------
    symbol : str
        Identifier, matching ``SYMBOL_PATTERN`` (e.g. ``"BTC-USD"``, ``"AAPL"``).
    asset_class : str
        One of ``ASSET_CLASSES``.
    calendar : str
        Calendar name understood by :mod:`forecasting_pipeline.market.calendars`.
    """

    symbol: str
    asset_class: str
    calendar: str


def load_instruments(path: Path | str | None = None) -> list[Instrument]:
    """Read and validate an instruments YAML file.

    The file is a mapping with one key, ``instruments``, holding a list of
    mappings with the keys ``symbol``, ``asset_class`` and ``calendar``.

    Parameters
    ----------
    path : pathlib.Path or str, optional
        File to read; ``DEFAULT_INSTRUMENTS_FILE`` when omitted.

    Returns
    -------
    list of Instrument
        In file order.

    Raises
    ------
    ValueError
        Unreadable file or invalid YAML, missing or unknown fields, an unknown
        calendar or asset class, a malformed or duplicate symbol. The message
        names the file and the entry (index and symbol where known).
    """
    file = Path(path) if path is not None else DEFAULT_INSTRUMENTS_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: cannot read instruments file: {error}") from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{file}: not valid YAML: {error}") from error
    if not isinstance(document, dict) or "instruments" not in document:
        raise ValueError(f"{file}: expected a mapping with an 'instruments' list at the top level")
    entries = document["instruments"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file}: 'instruments' must be a non-empty list")

    instruments: list[Instrument] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        instrument = _parse_entry(file, index, entry)
        if instrument.symbol in first_index:
            raise ValueError(
                f"{file}: entry {index} ({instrument.symbol}): duplicate symbol, "
                f"already defined by entry {first_index[instrument.symbol]}"
            )
        first_index[instrument.symbol] = index
        instruments.append(instrument)
    logger.debug("loaded %d instruments from %s", len(instruments), file)
    return instruments


def select_instruments(instruments: Sequence[Instrument], symbols: Iterable[str]) -> list[Instrument]:
    """Pick instruments by symbol, in the order the symbols are given.

    Parameters
    ----------
    instruments : sequence of Instrument
        The universe to pick from.
    symbols : iterable of str
        Wanted symbols; repeats are kept once.

    Returns
    -------
    list of Instrument

    Raises
    ------
    ValueError
        When any symbol is not in ``instruments``; all unknown symbols are
        listed.
    """
    by_symbol = {instrument.symbol: instrument for instrument in instruments}
    wanted = list(dict.fromkeys(symbols))
    unknown = [symbol for symbol in wanted if symbol not in by_symbol]
    if unknown:
        raise ValueError(
            f"unknown symbols {unknown}: not in the instrument universe "
            f"({len(by_symbol)} instruments: {sorted(by_symbol)})"
        )
    return [by_symbol[symbol] for symbol in wanted]


def _parse_entry(file: Path, index: int, entry: object) -> Instrument:
    where = f"{file}: entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with keys {list(_FIELDS)}, got {entry!r}")
    symbol = entry.get("symbol")
    if isinstance(symbol, str):
        where = f"{where} ({symbol})"
    missing = [field for field in _FIELDS if entry.get(field) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    unknown = sorted(str(key) for key in entry if key not in _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; allowed are {list(_FIELDS)}")
    values = {field: entry[field] for field in _FIELDS}
    for field, value in values.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}: {field} must be a string, got {value!r}")
    if not SYMBOL_PATTERN.match(values["symbol"]):
        raise ValueError(
            f"{where}: symbol {values['symbol']!r} must match {SYMBOL_PATTERN.pattern} "
            "(upper-case letters, digits, '.', '_', '-'; at most 32 characters)"
        )
    if values["asset_class"] not in ASSET_CLASSES:
        raise ValueError(
            f"{where}: unknown asset_class {values['asset_class']!r}; expected one of {list(ASSET_CLASSES)}"
        )
    try:
        validate_calendar_name(values["calendar"])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return Instrument(**values)
