"""Market-data sources: the bars schema, synthetic sample bars, bar files and a real PostgreSQL table."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal
from psycopg import sql

from forecasting_pipeline.market.calendars import bar_closes
from forecasting_pipeline.market.instruments import Instrument, load_instruments
from forecasting_pipeline.market.sources.files import find_bar_file, read_bar_file, read_bars_from_files
from forecasting_pipeline.market.sources.postgres import (
    BarTable,
    TableSource,
    _build_query,
    missing_read_index,
    read_bars_from_table,
)
from forecasting_pipeline.market.sources.sample import SAMPLE_IS_SYNTHETIC_NOTE, _full_series, _stable_seed, sample_bars
from forecasting_pipeline.market.sources.schema import BARS_SCHEMA, coerce_bars

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
BTC = Instrument("BTC-USD", "crypto", "24/7")
EURUSD = Instrument("EURUSD", "fx", "24/5")
AAPL = Instrument("AAPL", "equity", "XNAS")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def raw_bars(**overrides: object) -> pl.DataFrame:
    data: dict[str, object] = {
        "ts": [datetime(2025, 1, 2, 21), datetime(2025, 1, 3, 21)],
        "open": [1.0, 2.0],
        "high": [1.5, 2.5],
        "low": [0.5, 1.5],
        "close": [1.2, 2.2],
        "volume": [10, 20],
    }
    data.update(overrides)
    return pl.DataFrame(data)


# ---------------------------------------------------------------------------
# schema


def test_when_raw_bars_are_coerced_then_the_frame_has_the_bars_schema() -> None:
    bars = coerce_bars(raw_bars(extra=["a", "b"]), "AAPL", "test")

    assert bars.schema == BARS_SCHEMA
    assert bars["symbol"].to_list() == ["AAPL", "AAPL"]
    assert bars["ts"].to_list() == [utc(2025, 1, 2, 21), utc(2025, 1, 3, 21)]
    assert bars["volume"].to_list() == [10.0, 20.0]


def test_when_ts_is_iso_text_with_offsets_then_it_is_converted_to_utc() -> None:
    bars = coerce_bars(
        raw_bars(ts=["2025-01-03T16:00:00-05:00", "2025-01-02T21:00:00Z"], close=["1.2", " 2.2 "]),
        "AAPL",
        "test",
    )

    assert bars["ts"].to_list() == [utc(2025, 1, 2, 21), utc(2025, 1, 3, 21)]
    # Sorting moved the rows; their values moved with them.
    assert bars["close"].to_list() == [2.2, 1.2]


def test_when_ts_has_another_time_zone_then_it_is_converted_to_utc() -> None:
    ts = pl.Series([datetime(2025, 1, 2, 16), datetime(2025, 1, 3, 16)]).dt.replace_time_zone("America/New_York")

    bars = coerce_bars(raw_bars(ts=ts), "AAPL", "test")

    assert bars["ts"].to_list() == [utc(2025, 1, 2, 21), utc(2025, 1, 3, 21)]
    assert bars.schema["ts"] == pl.Datetime("us", "UTC")


def test_when_columns_are_missing_then_the_message_names_origin_symbol_and_columns() -> None:
    with pytest.raises(ValueError, match=r"^bars\.csv: AAPL: missing columns \['high', 'volume'\]"):
        coerce_bars(raw_bars().drop("high", "volume"), "AAPL", "bars.csv")


def test_when_a_numeric_column_has_text_then_the_column_and_a_sample_are_named() -> None:
    with pytest.raises(ValueError, match=r"bars\.csv: AAPL: column 'close' \(String\) has 1 values that are not numbers, e\.g\. 'n/a'"):
        coerce_bars(raw_bars(close=["1.2", "n/a"]), "AAPL", "bars.csv")


def test_when_ts_is_not_a_timestamp_then_a_sample_is_named() -> None:
    with pytest.raises(ValueError, match=r"AAPL: column 'ts' has values that are not ISO 8601 timestamps .* e\.g\. 'yesterday'"):
        coerce_bars(raw_bars(ts=["2025-01-02T21:00:00", "yesterday"]), "AAPL", "test")
    with pytest.raises(ValueError, match=r"AAPL: column 'ts' has dtype Int64"):
        coerce_bars(raw_bars(ts=[1, 2]), "AAPL", "test")


def test_when_symbol_column_holds_another_symbol_then_it_raises() -> None:
    with pytest.raises(ValueError, match=r"test: AAPL: 'symbol' column holds other symbols \['MSFT'\]"):
        coerce_bars(raw_bars(symbol=["AAPL", "MSFT"]), "AAPL", "test")


def test_when_rows_are_bad_then_coercion_keeps_them_for_validation() -> None:
    bars = coerce_bars(
        raw_bars(
            ts=[datetime(2025, 1, 3, 21), datetime(2025, 1, 3, 21), None],
            open=[1.0, None, -3.0],
            high=[0.1, 1.0, 1.0],
            low=[5.0, 1.0, 1.0],
            close=[1.0, 1.0, 1.0],
            volume=[1.0, 1.0, 1.0],
        ),
        "AAPL",
        "test",
    )

    assert bars.height == 3
    assert bars["open"].to_list() == [1.0, None, -3.0]
    assert bars["ts"].null_count() == 1


# ---------------------------------------------------------------------------
# synthetic sample


def test_when_later_end_is_asked_then_earlier_bars_are_identical() -> None:
    for instrument in (BTC, EURUSD, AAPL):
        for cadence in ("1h", "1d"):
            window_end = utc(2025, 3, 14, 15)
            early = sample_bars(instrument, cadence, window_end, 200, now=NOW)
            late = sample_bars(instrument, cadence, utc(2026, 5, 1), 100_000, now=NOW)

            overlap = late.filter(pl.col("ts") <= window_end).tail(200)
            assert early.height == 200
            assert early.equals(overlap)


def test_when_generated_further_ahead_then_existing_bars_do_not_change() -> None:
    short_ts, short = _full_series("BTC-USD", "crypto", "24/7", "1h", 2026)
    long_ts, long = _full_series("BTC-USD", "crypto", "24/7", "1h", 2031)

    n = len(short_ts)
    assert len(long_ts) > n
    assert np.array_equal(long_ts[:n], short_ts)
    for column in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(long[column][:n], short[column])


def test_when_now_is_earlier_than_end_then_no_bar_after_now_is_returned() -> None:
    bars = sample_bars(BTC, "1h", utc(2030, 1, 1), 10, now=utc(2025, 7, 4, 12, 30))

    assert bars["ts"].to_list()[-1] == utc(2025, 7, 4, 12)
    assert bars.height == 10


def test_when_seeding_then_the_seed_is_stable_across_processes() -> None:
    assert _stable_seed("BTC-USD", "1d") == 5102112003734015609


def test_when_sample_bars_are_drawn_then_timestamps_are_exactly_the_calendar_closes() -> None:
    for instrument in (BTC, EURUSD, AAPL):
        bars = sample_bars(instrument, "1h", utc(2025, 11, 30), 100, now=NOW)
        expected = bar_closes(instrument.calendar, "1h", bars["ts"][0] - timedelta(seconds=1), utc(2025, 11, 30))

        assert bars["ts"].to_list() == expected


def test_when_sample_covers_a_holiday_then_it_has_no_bars_that_day() -> None:
    bars = sample_bars(AAPL, "1h", utc(2025, 7, 8), 40, now=NOW)

    days = bars["ts"].dt.date().unique().sort().to_list()
    assert datetime(2025, 7, 4).date() not in days
    assert bars.filter(pl.col("ts").dt.date() == datetime(2025, 7, 3).date()).height == 4


def test_when_all_default_instruments_are_sampled_then_ohlc_is_consistent_and_positive() -> None:
    for instrument in load_instruments():
        for cadence in ("1h", "1d"):
            bars = sample_bars(instrument, cadence, NOW, 2000, now=NOW)

            assert bars.height == 2000, (instrument.symbol, cadence)
            assert bars.schema == BARS_SCHEMA
            assert bars["ts"].is_sorted()
            assert bars["ts"].n_unique() == bars.height
            assert bars.filter(
                (pl.col("low") > pl.min_horizontal("open", "close"))
                | (pl.col("high") < pl.max_horizontal("open", "close"))
                | (pl.col("low") <= 0)
                | (pl.col("volume") <= 0)
            ).height == 0, (instrument.symbol, cadence)


@pytest.mark.parametrize(
    ("instrument", "low", "high"),
    [
        (BTC, 10_000.0, 400_000.0),
        (EURUSD, 0.7, 1.6),
        (Instrument("USDJPY", "fx", "24/5"), 90.0, 220.0),
        (AAPL, 50.0, 800.0),
        (Instrument("SPX", "index", "XNYS"), 2000.0, 15000.0),
    ],
)
def test_when_sampled_then_price_levels_are_plausible(instrument: Instrument, low: float, high: float) -> None:
    bars = sample_bars(instrument, "1d", NOW, 100_000, now=NOW)

    assert bars["ts"][0] > utc(2018, 1, 1)
    assert low < bars["low"].min() and bars["high"].max() < high


def test_when_returns_are_large_then_volume_is_higher() -> None:
    bars = sample_bars(BTC, "1h", NOW, 5000, now=NOW)

    abs_return = np.abs(np.log(bars["close"].to_numpy() / bars["open"].to_numpy()))
    correlation = np.corrcoef(abs_return, np.log(bars["volume"].to_numpy()))[0, 1]
    assert correlation > 0.3


def test_when_volatility_clusters_then_absolute_returns_are_autocorrelated() -> None:
    bars = sample_bars(EURUSD, "1h", NOW, 8000, now=NOW)

    abs_return = np.abs(np.diff(np.log(bars["close"].to_numpy())))
    lag1 = np.corrcoef(abs_return[:-1], abs_return[1:])[0, 1]
    assert lag1 > 0.05


def test_when_end_is_before_the_epoch_then_the_frame_is_empty() -> None:
    bars = sample_bars(BTC, "1h", utc(2024, 8, 1), 10, now=NOW)

    assert bars.height == 0
    assert bars.schema == BARS_SCHEMA


def test_when_n_bars_is_not_positive_then_sample_bars_raises() -> None:
    with pytest.raises(ValueError, match="BTC-USD: n_bars must be a positive integer, got 0"):
        sample_bars(BTC, "1h", NOW, 0)


def test_when_all_instruments_are_sampled_twice_then_the_cached_series_give_identical_bars() -> None:
    instruments = load_instruments()
    first = [sample_bars(i, c, NOW, 2048, now=NOW) for i in instruments for c in ("1h", "1d")]
    second = [sample_bars(i, c, NOW, 2048, now=NOW) for i in instruments for c in ("1h", "1d")]

    assert all(a.equals(b) for a, b in zip(first, second, strict=True))
    assert all(frame.height > 0 for frame in first)
    assert "Synthetic" in SAMPLE_IS_SYNTHETIC_NOTE


# ---------------------------------------------------------------------------
# files


@pytest.fixture
def aapl_daily() -> pl.DataFrame:
    return sample_bars(AAPL, "1d", utc(2025, 12, 31), 60, now=NOW)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_when_bars_are_written_and_read_back_then_they_are_identical(
    tmp_path: Path, aapl_daily: pl.DataFrame, suffix: str
) -> None:
    (tmp_path / "1d").mkdir()
    path = tmp_path / "1d" / f"AAPL{suffix}"
    if suffix == ".parquet":
        aapl_daily.drop("symbol").write_parquet(path)
    else:
        aapl_daily.drop("symbol").write_csv(path)

    assert find_bar_file(tmp_path, "1d", "AAPL") == path
    assert read_bar_file(path, "AAPL").equals(aapl_daily)


def test_when_both_files_exist_then_parquet_wins(tmp_path: Path, aapl_daily: pl.DataFrame) -> None:
    (tmp_path / "1d").mkdir()
    aapl_daily.write_csv(tmp_path / "1d" / "AAPL.csv")
    aapl_daily.write_parquet(tmp_path / "1d" / "AAPL.parquet")

    assert find_bar_file(tmp_path, "1d", "AAPL") == tmp_path / "1d" / "AAPL.parquet"


def test_when_reading_up_to_end_then_only_the_last_n_bars_at_or_before_end_are_kept(
    tmp_path: Path, aapl_daily: pl.DataFrame
) -> None:
    (tmp_path / "1d").mkdir()
    aapl_daily.write_parquet(tmp_path / "1d" / "AAPL.parquet")
    end = aapl_daily["ts"][40]

    bars = read_bars_from_files(tmp_path, "1d", "AAPL", end, 5)

    assert bars.equals(aapl_daily.slice(36, 5))


def test_when_no_file_exists_then_the_tried_paths_are_listed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"AAPL: no 1h bar file; tried .*1h/AAPL\.parquet.*1h/AAPL\.csv"):
        find_bar_file(tmp_path, "1h", "AAPL")


def test_when_symbol_could_escape_the_root_then_no_path_is_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"symbol '\.\./secret' does not match"):
        find_bar_file(tmp_path, "1d", "../secret")


def test_when_csv_lacks_a_column_then_the_path_and_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "AAPL.csv"
    path.write_text("ts,open,high,low,close\n2025-01-02T21:00:00Z,1,2,0.5,1.5\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: AAPL: missing columns \['volume'\]"):
        read_bar_file(path, "AAPL")


def test_when_csv_has_a_non_numeric_price_then_the_value_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "AAPL.csv"
    path.write_text("ts,open,high,low,close,volume\n2025-01-02T21:00:00Z,1,2,0.5,abc,100\n")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: AAPL: column 'close' .* e\.g\. 'abc'"):
        read_bar_file(path, "AAPL")


def test_when_parquet_is_corrupt_then_the_path_and_reason_are_named(tmp_path: Path) -> None:
    path = tmp_path / "AAPL.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: AAPL: cannot read bar file: \w+"):
        read_bar_file(path, "AAPL")


def test_when_file_type_is_unsupported_then_it_raises(tmp_path: Path) -> None:
    path = tmp_path / "AAPL.json"
    path.write_text("{}")

    with pytest.raises(ValueError, match=r"unsupported bar file type '\.json'"):
        read_bar_file(path, "AAPL")


# ---------------------------------------------------------------------------
# postgres


def assert_bars_equal(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(actual.drop("open"), expected.drop("open"), check_exact=True)
    assert_frame_equal(actual.select("open"), expected.select("open"), check_exact=False, rel_tol=1e-13, abs_tol=0.0)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def bar_table(database_url: str) -> Iterator[tuple[str, BarTable, dict[tuple[str, str], pl.DataFrame]]]:
    """A uniquely named OHLCV table holding sample bars for two symbols and both cadences.

    ``open`` is ``numeric`` to exercise the reader's cast; PostgreSQL keeps
    15 significant digits of a float8 stored there, so comparisons of that
    column use a relative tolerance.
    """
    name = f"ohlcv_test_{uuid.uuid4().hex[:12]}"
    written: dict[tuple[str, str], pl.DataFrame] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (symbol text NOT NULL, timeframe text NOT NULL, ts timestamptz NOT NULL, "
                "open numeric, high double precision, low double precision, close double precision, "
                "volume double precision)"
            ).format(sql.Identifier(name))
        )
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(sql.Identifier(name))
        with conn.cursor() as cursor:
            for instrument in (BTC, AAPL):
                for cadence in ("1h", "1d"):
                    bars = sample_bars(instrument, cadence, utc(2025, 12, 31), 50, now=NOW)
                    written[(instrument.symbol, cadence)] = bars
                    cursor.executemany(
                        insert,
                        [(row[0], cadence, *row[1:]) for row in bars.iter_rows()],
                    )
    try:
        yield database_url, BarTable(table=name), written
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def test_when_many_symbols_are_read_then_each_gets_its_last_n_bars_at_or_before_end(bar_table) -> None:
    url, table, written = bar_table
    end = written[("AAPL", "1d")]["ts"][-11]

    with psycopg.connect(url) as conn:
        bars = read_bars_from_table(conn, table, ["BTC-USD", "AAPL", "MISSING"], "1d", end, 7)

    expected_aapl = written[("AAPL", "1d")].filter(pl.col("ts") <= end).tail(7)
    expected_btc = written[("BTC-USD", "1d")].filter(pl.col("ts") <= end).tail(7)
    assert bars.schema == BARS_SCHEMA
    assert bars.height == 14
    assert_bars_equal(bars.filter(pl.col("symbol") == "AAPL"), expected_aapl)
    assert_bars_equal(bars.filter(pl.col("symbol") == "BTC-USD"), expected_btc)


def test_when_cadence_differs_then_only_that_timeframe_is_read(bar_table) -> None:
    url, table, written = bar_table

    with psycopg.connect(url) as conn:
        bars = read_bars_from_table(conn, table, ["BTC-USD"], "1h", utc(2030, 1, 1), 1000)

    assert_bars_equal(bars, written[("BTC-USD", "1h")])


def test_when_table_holds_one_cadence_then_timeframe_col_can_be_none(bar_table) -> None:
    url, table, written = bar_table
    view = f"{table.table}_daily"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE VIEW {} AS SELECT symbol, ts, open, high, low, close, volume FROM {} WHERE timeframe = '1d'").format(
                sql.Identifier(view), sql.Identifier(table.table)
            )
        )
        try:
            bars = read_bars_from_table(
                conn, BarTable(table=view, schema="public", timeframe_col=None), ["AAPL"], "1d", utc(2030, 1, 1), 3
            )
        finally:
            conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(view)))

    assert_bars_equal(bars, written[("AAPL", "1d")].tail(3))


def test_when_a_symbol_value_is_hostile_then_it_is_bound_as_data(bar_table) -> None:
    url, table, _ = bar_table
    hostile = f"x'); DROP TABLE {table.table}; --"

    with psycopg.connect(url) as conn:
        bars = read_bars_from_table(conn, table, [hostile], "1d", utc(2030, 1, 1), 5)
        still_there = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.table))
        ).fetchone()[0]

    assert bars.height == 0
    assert bars.schema == BARS_SCHEMA
    assert still_there == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table", "ohlcv; DROP TABLE x"),
        ("schema", "public.x"),
        ("ts_col", 'ts"'),
        ("timeframe_col", ""),
        ("close_col", "1close"),
        ("volume_col", "v" * 64),
    ],
)
def test_when_an_identifier_is_hostile_then_bar_table_refuses_it(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"BarTable\.{field} = .* is not a plain SQL identifier"):
        BarTable(**{field: value})


def test_when_no_symbols_are_asked_then_no_query_runs_and_the_frame_is_empty() -> None:
    # No connection at all: an empty request must not touch the database.
    bars = read_bars_from_table(None, BarTable(), [], "1d", NOW, 5)  # type: ignore[arg-type]

    assert bars.height == 0
    assert bars.schema == BARS_SCHEMA


@pytest.fixture
def indexed_bar_table(bar_table) -> Iterator[tuple[str, BarTable, dict[tuple[str, str], pl.DataFrame]]]:
    """``bar_table`` with the index a bar table should have: (symbol, timeframe, ts)."""
    url, table, written = bar_table
    index = f"{table.table}_read"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (symbol, timeframe, ts)").format(
            sql.Identifier(index), sql.Identifier(table.table)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.table)))
    try:
        yield url, table, written
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))


def test_when_a_window_is_read_then_each_symbol_is_an_index_walk_that_stops_at_its_bars(database_url) -> None:
    table = BarTable(table=f"ohlcv_long_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Three years of hourly bars of two symbols, and the index a bar table should have.
        conn.execute(sql.SQL(
            "CREATE TABLE {0} AS SELECT s AS symbol, '1h'::text AS timeframe, "
            "timestamptz '2026-01-01 00:00+00' - make_interval(hours => h) AS ts, 1.0::float8 AS open, "
            "1.0::float8 AS high, 1.0::float8 AS low, 1.0::float8 AS close, 1.0::float8 AS volume "
            "FROM unnest(ARRAY['AAPL', 'BTC-USD']) AS s, generate_series(0, 26279) AS h; "
            "CREATE INDEX ON {0} (symbol, timeframe, ts); ANALYZE {0}").format(sql.Identifier(table.table)))
        try:
            query, params = _build_query(table, ["AAPL", "BTC-USD"], "1h", utc(2025, 12, 1), utc(2025, 12, 1), 2048)
            plan = "\n".join(row[0] for row in conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall())
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table.table)))

    assert "Index Scan Backward" in plan and "Limit" in plan
    assert "WindowAgg" not in plan and "Seq Scan on" not in plan


def test_when_the_bar_table_lacks_its_index_then_the_source_names_the_index_to_create_and_still_reads(
    bar_table, caplog
) -> None:
    url, table, written = bar_table
    source = TableSource(url, table)

    with caplog.at_level(logging.WARNING, logger="forecasting_pipeline.market.sources.postgres"):
        bars, unreadable = source.bars([AAPL], "1d", utc(2030, 1, 1), 5)
        source.bars([AAPL], "1d", utc(2030, 1, 1), 5)

    assert unreadable == {}
    assert_bars_equal(bars, written[("AAPL", "1d")].tail(5))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"{table.table} has no index on (symbol, [timeframe,] ts): each read scans the table; "
                        f"create one: CREATE INDEX CONCURRENTLY ON {table.table} (symbol, timeframe, ts)"]


def test_when_the_bar_table_has_its_index_then_no_index_is_missing(indexed_bar_table) -> None:
    url, table, _ = indexed_bar_table

    with psycopg.connect(url) as conn:
        assert missing_read_index(conn, table) is None
        # Read as a one-cadence table, (symbol, timeframe, ts) cannot give one symbol's bars in ts order.
        assert missing_read_index(conn, BarTable(table=table.table, timeframe_col=None)) == (
            f"CREATE INDEX CONCURRENTLY ON {table.table} (symbol, ts)")


def test_when_a_source_reads_many_times_then_its_connections_come_from_one_pool(indexed_bar_table) -> None:
    url, table, _ = indexed_bar_table
    source = TableSource(url, table)

    def sessions() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
            return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]

    source.bars([AAPL, BTC], "1d", utc(2030, 1, 1), 5)
    before = sessions()
    reads = [TableSource(url, table).bars([AAPL, BTC], "1d", utc(2030, 1, 1), 5)[0].height for _ in range(10)]

    assert reads == [10] * 10
    # This count's own connection is the only new session: every read borrowed the pooled one.
    assert sessions() - before == 1


def test_when_the_bar_read_benchmark_runs_as_a_smoke_then_it_prints_both_reads_and_their_ratios(database_url) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bar_reads.py"), "--smoke"],
        env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True, timeout=240,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "one hourly window: 3 instruments x 256 bars, median of 3 reads" in done.stdout
    assert re.search(r"^bars_10y +87600 +262800 ", done.stdout, re.MULTILINE)
    assert re.search(r"ratio 10y/1y: source \d+\.\d\d \(target <= 1\.5\), whole-history query \d+\.\d\d", done.stdout)
