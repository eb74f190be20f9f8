"""The instrument universe file: the shipped default and every way a user's edit can be wrong."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from forecasting_pipeline.market.instruments import (
    DEFAULT_INSTRUMENTS_FILE,
    Instrument,
    load_instruments,
    select_instruments,
)


def write_yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "instruments.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_when_default_file_is_loaded_then_it_has_the_23_demo_instruments() -> None:
    instruments = load_instruments()

    assert DEFAULT_INSTRUMENTS_FILE.name == "instruments.yaml"
    assert len(instruments) == 23
    assert Counter(i.asset_class for i in instruments) == {
        "crypto": 5,
        "fx": 6,
        "commodity": 1,
        "equity": 8,
        "index": 3,
    }
    assert Counter(i.calendar for i in instruments) == {"24/7": 5, "24/5": 7, "XNAS": 8, "XNYS": 3}
    assert instruments[0] == Instrument(symbol="BTC-USD", asset_class="crypto", calendar="24/7")
    by_symbol = {i.symbol: i for i in instruments}
    assert by_symbol["XAUUSD"] == Instrument("XAUUSD", "commodity", "24/5")
    assert by_symbol["JPM"].calendar == "XNYS"
    assert by_symbol["NDX"] == Instrument("NDX", "index", "XNAS")


def test_when_path_is_given_as_string_then_it_is_read(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "instruments:\n  - {symbol: EURUSD, asset_class: fx, calendar: '24/5'}\n")

    assert load_instruments(str(path)) == [Instrument("EURUSD", "fx", "24/5")]


def test_when_file_does_not_exist_then_the_message_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ValueError, match=rf"{re.escape(str(missing))}: cannot read instruments file"):
        load_instruments(missing)


def test_when_yaml_is_malformed_then_it_raises(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "instruments: [ {symbol: A\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not valid YAML"):
        load_instruments(path)


def test_when_top_level_has_no_instruments_list_then_it_raises(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- {symbol: AAPL}\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: expected a mapping with an 'instruments' list"):
        load_instruments(path)


def test_when_a_field_is_missing_then_the_entry_index_and_symbol_are_named(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "instruments:\n"
        "  - {symbol: AAPL, asset_class: equity, calendar: XNAS}\n"
        "  - {symbol: MSFT, asset_class: equity}\n",
    )

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 1 \(MSFT\): missing fields \['calendar'\]"):
        load_instruments(path)


def test_when_calendar_is_unknown_then_the_entry_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "instruments:\n  - {symbol: AAPL, asset_class: equity, calendar: NASDAQQ}\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 0 \(AAPL\): unknown calendar 'NASDAQQ'"):
        load_instruments(path)


def test_when_asset_class_is_unknown_then_the_entry_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "instruments:\n  - {symbol: AAPL, asset_class: stock, calendar: XNAS}\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 0 \(AAPL\): unknown asset_class 'stock'"):
        load_instruments(path)


def test_when_a_symbol_repeats_then_both_entries_are_named(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "instruments:\n"
        "  - {symbol: AAPL, asset_class: equity, calendar: XNAS}\n"
        "  - {symbol: MSFT, asset_class: equity, calendar: XNAS}\n"
        "  - {symbol: AAPL, asset_class: equity, calendar: XNYS}\n",
    )

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 2 \(AAPL\): duplicate symbol, already defined by entry 0"):
        load_instruments(path)


@pytest.mark.parametrize("symbol", ["aapl", "../etc/passwd", "A B", "-AAPL", "X" * 33, "BTC/USD"])
def test_when_symbol_is_malformed_then_it_is_refused(tmp_path: Path, symbol: str) -> None:
    path = write_yaml(tmp_path, f"instruments:\n  - {{symbol: '{symbol}', asset_class: equity, calendar: XNAS}}\n")

    with pytest.raises(ValueError, match=r"entry 0 .*: symbol .* must match"):
        load_instruments(path)


def test_when_symbol_is_not_a_string_then_it_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "instruments:\n  - {symbol: 123, asset_class: equity, calendar: XNAS}\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 0: symbol must be a string, got 123"):
        load_instruments(path)


def test_when_an_entry_has_an_unknown_field_then_it_is_refused(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path, "instruments:\n  - {symbol: AAPL, asset_class: equity, calendar: XNAS, calender: XNYS}\n"
    )

    with pytest.raises(ValueError, match=r"entry 0 \(AAPL\): unknown fields \['calender'\]"):
        load_instruments(path)


def test_when_symbols_are_selected_then_they_come_back_in_the_requested_order() -> None:
    instruments = load_instruments()

    selected = select_instruments(instruments, ["SPX", "BTC-USD", "SPX"])

    assert [i.symbol for i in selected] == ["SPX", "BTC-USD"]


def test_when_unknown_symbols_are_selected_then_all_of_them_are_listed() -> None:
    instruments = load_instruments()

    with pytest.raises(ValueError, match=r"unknown symbols \['DOGE-USD', 'FTSE'\]"):
        select_instruments(instruments, ["BTC-USD", "DOGE-USD", "FTSE"])
