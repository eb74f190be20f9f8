"""Bar validation: every bad-data rule fed through real Parquet/CSV files, read by the files source."""

import functools
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.market.calendars import last_bar_close
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.market.validation import (
    EXCLUDED,
    REPAIRED,
    WARNED,
    ValidationConfig,
    check_names,
    findings_frame,
    jump_findings,
    nothing_to_forecast,
    validate_instrument,
    validate_window,
    without_jumps,
)
from forecasting_pipeline.orchestration.resources import MarketDataResource

# The daily window 2025-06-02 ends at 2025-06-03 00:00 UTC.
END = datetime(2025, 6, 3, tzinfo=timezone.utc)
N_BARS = 200


@functools.cache
def universe():
    return load_instruments()


def instrument(symbol):
    return select_instruments(universe(), [symbol])[0]


def good_bars(symbol, end=END, n=N_BARS):
    return sample_bars(instrument(symbol), "1d", end, n)


def read_and_validate(root, symbols, end=END, config=None):
    chosen = select_instruments(universe(), symbols)
    bars, errors = MarketDataResource(source="files", path=str(root)).bar_source().bars(chosen, "1d", end, N_BARS)
    return validate_window(bars, chosen, "1d", end, config, source_errors=errors)


def set_value(bars: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    index = pl.int_range(pl.len())
    return bars.with_columns(
        pl.when(index == row).then(pl.lit(v, dtype=pl.Float64)).otherwise(pl.col(c)).alias(c) for c, v in values.items()
    )


def rules_of(validated, symbol):
    return [(f.rule, f.action, f.ts) for f in validated.findings_of(symbol)]


ROW = 150  # a bar well inside the history


@pytest.mark.parametrize(
    ("rule", "corrupt"),
    [
        ("non_finite", lambda b: set_value(b, ROW, close=float("nan"))),
        ("non_finite", lambda b: set_value(b, ROW, volume=float("inf"))),
        ("non_positive_price", lambda b: set_value(b, ROW, open=0.0, high=0.0, low=0.0, close=0.0)),
        ("ohlc_inconsistent", lambda b: set_value(b, ROW, high=b["low"][ROW] * 0.5)),
        ("ohlc_inconsistent", lambda b: set_value(b, ROW, close=b["high"][ROW] * 1.01)),
        ("ohlc_inconsistent", lambda b: set_value(b, ROW, open=b["low"][ROW] * 0.99)),
        ("negative_volume", lambda b: set_value(b, ROW, volume=-1.0)),
    ],
)
def test_when_a_bar_has_a_bad_value_then_the_instrument_is_excluded_naming_the_bar_and_rule(bar_files, rule, corrupt):
    bars = good_bars("BTC-USD")
    bar_files.write("BTC-USD", corrupt(bars))
    bar_files.write("ETH-USD", good_bars("ETH-USD"))

    validated = read_and_validate(bar_files.root, ["BTC-USD", "ETH-USD"])

    assert validated.excluded == ["BTC-USD"]
    assert validated.kept == ["ETH-USD"]
    assert rules_of(validated, "BTC-USD") == [(rule, EXCLUDED, bars["ts"][ROW])]
    assert validated.bars.equals(good_bars("ETH-USD"))


def test_when_a_csv_cell_is_empty_then_the_bar_is_non_finite_and_the_instrument_excluded(bar_files):
    bars = good_bars("AAPL")
    bar_files.write("AAPL", bars.with_columns(pl.when(pl.int_range(pl.len()) == ROW).then(None)
                                              .otherwise(pl.col("volume")).alias("volume")), fmt="csv")

    validated = read_and_validate(bar_files.root, ["AAPL"])

    assert rules_of(validated, "AAPL") == [("non_finite", EXCLUDED, bars["ts"][ROW])]


def test_when_a_bar_is_duplicated_identically_then_one_copy_is_kept_and_the_instrument_stays(bar_files):
    bars = good_bars("EURUSD")
    bar_files.write("EURUSD", pl.concat([bars, bars[ROW]]), fmt="csv")

    validated = read_and_validate(bar_files.root, ["EURUSD"])

    assert validated.kept == ["EURUSD"]
    assert rules_of(validated, "EURUSD") == [("duplicate_ts", REPAIRED, bars["ts"][ROW])]
    # CSV round-trips floats exactly (shortest repr), so the kept bars are the original ones; the
    # source's last-N_BARS cut counted the copy, so the oldest bar fell out of the window.
    assert validated.bars.equals(bars[1:])


def test_when_two_different_bars_share_a_timestamp_then_the_instrument_is_excluded(bar_files):
    bars = good_bars("EURUSD")
    other = set_value(bars[ROW], 0, volume=bars["volume"][ROW] + 1)
    bar_files.write("EURUSD", pl.concat([bars, other]))

    validated = read_and_validate(bar_files.root, ["EURUSD"])

    assert rules_of(validated, "EURUSD") == [("duplicate_ts", EXCLUDED, bars["ts"][ROW])]


def test_when_a_file_is_out_of_order_then_the_bars_arrive_sorted_and_unchanged(bar_files):
    bars = good_bars("MSFT")
    bar_files.write("MSFT", bars.reverse(), fmt="csv")

    validated = read_and_validate(bar_files.root, ["MSFT"])

    assert validated.findings == []
    assert validated.bars.equals(bars)


def test_when_a_source_returns_bars_out_of_order_then_validation_sorts_them_and_says_so():
    bars = good_bars("MSFT")
    shuffled = pl.concat([bars[:ROW], bars[ROW + 1:ROW + 2], bars[ROW:ROW + 1], bars[ROW + 2:]])

    repaired, findings = validate_instrument(shuffled, instrument("MSFT"), "1d", END)

    assert [(f.rule, f.action, f.ts) for f in findings] == [("out_of_order", REPAIRED, bars["ts"][ROW])]
    assert repaired.equals(bars)


def test_when_bars_are_missing_inside_the_history_then_the_gap_is_reported_and_the_instrument_kept(bar_files):
    bars = good_bars("BTC-USD")
    bar_files.write("BTC-USD", pl.concat([bars[:ROW], bars[ROW + 3:]]))

    validated = read_and_validate(bar_files.root, ["BTC-USD"])

    assert validated.kept == ["BTC-USD"]
    [finding] = validated.findings
    assert (finding.rule, finding.action, finding.ts) == ("calendar_gap", WARNED, bars["ts"][ROW])
    assert finding.message.startswith("3 bar(s) missing from 2025-")


def test_when_too_many_calendar_bars_are_missing_then_the_instrument_is_excluded(bar_files):
    bars = good_bars("BTC-USD")
    bar_files.write("BTC-USD", bars.gather_every(2, offset=1))  # every other day; ends on the last bar

    validated = read_and_validate(bar_files.root, ["BTC-USD"])

    assert validated.excluded == ["BTC-USD"]
    summary = [f for f in validated.findings if f.action == EXCLUDED]
    assert [(f.rule, f.ts) for f in summary] == [("calendar_gap", None)]
    assert summary[0].message == "99 of 199 expected bars missing (49.7%), more than max_missing_fraction=10%"


def test_when_an_exchange_is_closed_for_a_holiday_then_it_is_neither_a_gap_nor_stale(bar_files):
    # 2025-05-26 was Memorial Day: the window of that day ends with Friday's close as the last bar.
    holiday_end = datetime(2025, 5, 27, tzinfo=timezone.utc)
    bars = good_bars("AAPL", end=holiday_end)
    bar_files.write("AAPL", bars)

    validated = read_and_validate(bar_files.root, ["AAPL"], end=holiday_end)

    assert bars["ts"][-1] == datetime(2025, 5, 23, 20, tzinfo=timezone.utc)
    assert validated.findings == []
    assert validated.kept == ["AAPL"]


def test_when_the_last_bar_is_older_than_the_calendar_allows_then_the_feed_is_stale_and_excluded(bar_files):
    bars = good_bars("AAPL")
    bar_files.write("AAPL", bars[:-2])

    validated = read_and_validate(bar_files.root, ["AAPL"])

    [finding] = validated.findings
    assert (finding.rule, finding.action, finding.ts) == ("stale", EXCLUDED, bars["ts"][-3])
    assert f"is {last_bar_close('XNAS', '1d', END).isoformat()}: 2 bar(s) missing" in finding.message


def test_when_max_stale_bars_allows_the_lag_then_the_instrument_is_kept(bar_files):
    bars = good_bars("AAPL")
    bar_files.write("AAPL", bars[:-2])

    validated = read_and_validate(bar_files.root, ["AAPL"], config=ValidationConfig(max_stale_bars=2))

    assert validated.kept == ["AAPL"]


def test_when_history_is_shorter_than_the_minimum_then_the_instrument_is_excluded(bar_files):
    bar_files.write("SPX", good_bars("SPX", n=30))

    validated = read_and_validate(bar_files.root, ["SPX"])

    assert [(f.rule, f.action, f.message) for f in validated.findings] == [
        ("short_history", EXCLUDED, "30 bars, fewer than min_history_bars=64")
    ]


def test_when_a_close_jumps_beyond_the_threshold_then_it_is_reported_and_the_instrument_kept(bar_files):
    bars = good_bars("XAUUSD")
    spike = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == ROW).then(pl.col(c) * 5).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close")
    )
    bar_files.write("XAUUSD", spike)

    validated = read_and_validate(bar_files.root, ["XAUUSD"])

    assert validated.kept == ["XAUUSD"]
    assert rules_of(validated, "XAUUSD") == [("jump", WARNED, bars["ts"][ROW]), ("jump", WARNED, bars["ts"][ROW + 1])]
    assert validated.findings[0].message.startswith("close moved +")


def test_when_spans_are_decided_together_then_each_has_a_jump_exactly_when_jump_findings_finds_one(real_bars):
    closes = real_bars("GOOG")["close"].to_numpy()
    returns = np.diff(np.log(closes))[:600]
    spiked = returns.copy()
    spiked[300] += 0.8
    rows = np.stack([
        returns,                             # real returns
        spiked,                              # one spike
        np.where(np.arange(600) % 50 == 0, 0.01, 0.0),  # mostly flat: the plain deviation decides
        np.zeros(600),                       # constant: no spread, nothing to judge
        np.where(np.arange(600) == 7, 0.05, 0.0),       # flat but for one move
    ])
    config = ValidationConfig()

    decided = without_jumps(rows, config)

    alone = [not jump_findings("GOOG", row, lambda i: END, config) for row in rows]
    assert decided.tolist() == alone
    assert alone[0] and not alone[1] and not alone[4] and alone[3]
    with pytest.raises(ValueError, match="2-D array of returns"):
        without_jumps(returns, config)


@pytest.mark.parametrize(
    ("content", "fmt", "reason"),
    [
        (b"PAR1 this is not parquet", "parquet", "cannot read bar file"),
        (b"ts,open,high,low,close\n2025-06-02T00:00:00,1,1,1,1\n", "csv", "missing columns ['volume']"),
        (b"ts,open,high,low,close,volume\n2025-06-02T00:00:00,1,1,1,abc,1\n", "csv", "column 'close' (String) has 1 values that are not numbers"),
        (b"ts,open,high,low,close,volume\nyesterday,1,1,1,1,1\n", "csv", "column 'ts' has values that are not ISO 8601"),
    ],
    ids=["unreadable", "missing-columns", "wrong-type-number", "wrong-type-timestamp"],
)
def test_when_a_file_is_unreadable_or_mistyped_then_that_instrument_is_excluded_with_the_reason(
    bar_files, content, fmt, reason
):
    bar_files.write_bytes("NVDA", content, fmt=fmt)
    bar_files.write("JPM", good_bars("JPM"))

    validated = read_and_validate(bar_files.root, ["NVDA", "JPM"])

    assert validated.excluded == ["NVDA"]
    assert validated.kept == ["JPM"]
    [finding] = validated.findings_of("NVDA")
    assert (finding.rule, finding.action, finding.ts) == ("unreadable", EXCLUDED, None)
    assert reason in finding.message


def test_when_a_file_is_missing_then_that_instrument_is_excluded(bar_files):
    bar_files.write("JPM", good_bars("JPM"))

    validated = read_and_validate(bar_files.root, ["TSLA", "JPM"])

    [finding] = validated.findings_of("TSLA")
    assert (finding.rule, finding.action) == ("unreadable", EXCLUDED)
    assert "no 1d bar file" in finding.message


def test_when_a_source_has_no_bars_for_an_instrument_then_it_is_excluded_as_missing():
    validated = validate_window(good_bars("JPM"), [instrument("JPM"), instrument("DJI")], "1d", END)

    assert validated.excluded == ["DJI"]
    assert [(f.rule, f.message) for f in validated.findings] == [
        ("missing", "no 1d bars at or before 2025-06-03T00:00:00+00:00")
    ]


def test_when_every_instrument_is_excluded_then_the_window_fails_naming_each(bar_files):
    bar_files.write("AAPL", good_bars("AAPL", n=10))

    validated = read_and_validate(bar_files.root, ["AAPL", "MSFT"])

    reason = nothing_to_forecast("2025-06-02", validated)

    assert reason.startswith("window 2025-06-02: every instrument (2) was excluded")
    assert "AAPL: short_history: 10 bars" in reason
    assert "MSFT: unreadable:" in reason


def test_when_sample_bars_of_the_whole_universe_are_validated_then_none_is_excluded():
    for cadence, end, n in (("1d", END, 1024), ("1h", datetime(2026, 3, 2, 16, tzinfo=timezone.utc), 2048)):
        bars, errors = MarketDataResource(source="sample").bar_source().bars(universe(), cadence, end, n)
        validated = validate_window(bars, universe(), cadence, end, source_errors=errors)
        assert validated.excluded == []
        assert len(validated.bars) == len(bars)
        assert {f.rule for f in validated.findings} <= {"jump"}


def test_when_findings_are_tabulated_then_each_names_instrument_bar_rule_and_action():
    frame = findings_frame(validate_window(good_bars("JPM")[:-1], [instrument("JPM")], "1d", END).findings)

    assert frame.columns == ["symbol", "ts", "rule", "action", "message"]
    assert frame.select("symbol", "rule", "action").rows() == [("JPM", "stale", EXCLUDED)]


def test_when_two_symbols_would_share_a_check_name_then_they_are_refused():
    assert check_names(["BTC-USD", "AAPL"]) == {"BTC-USD": "bars_valid_BTC_USD", "AAPL": "bars_valid_AAPL"}
    with pytest.raises(ValueError, match="'BTC-USD' and 'BTC_USD' would share the asset check name 'bars_valid_BTC_USD'"):
        check_names(["BTC-USD", "BTC_USD"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_history_bars", 0), ("jump_sigma", 0.0), ("max_missing_fraction", 1.5), ("max_stale_bars", -1)],
)
def test_when_a_threshold_is_out_of_range_then_the_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ValidationConfig(**{field: value})


def test_when_bars_end_exactly_at_the_window_end_then_nothing_is_stale():
    bars = good_bars("ETH-USD")

    _, findings = validate_instrument(bars, instrument("ETH-USD"), "1d", END)

    assert bars["ts"][-1] == END
    assert findings == []
    assert END - bars["ts"][0] == timedelta(days=N_BARS - 1)
