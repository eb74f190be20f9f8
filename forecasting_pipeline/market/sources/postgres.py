"""Bars read from an existing PostgreSQL table of OHLCV rows.

This module owns the description of such a table (``BarTable``: which table,
which columns) and the query that reads the recent bars of many symbols at
once. Identifiers come from configuration, so each one is checked against a
strict pattern and composed only through ``psycopg.sql``; every value is a
bound parameter.

A read walks an index on (symbol, [timeframe,] ts) backwards from the window's end,
once per symbol, and stops after the bars it needs: its cost does not grow with
the years of history the table holds. Without such an index it scans the table,
and ``TableSource`` says so once, naming the index to create.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import polars as pl
import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.schema import (
    BAR_COLUMNS,
    BarSource,
    coerce_bars,
    empty_bars,
)
from forecasting_pipeline.storage.database import DatabaseUnavailableError, describe_database, shared_pool
from forecasting_pipeline.times import as_utc

logger = logging.getLogger(__name__)

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class BarTable:
    """Where bars live in PostgreSQL.

    Attributes
    ----------
    table : str
        Table (or view) name.
    schema : str or None
        Schema name; ``None`` uses the connection's ``search_path``.
    symbol_col, ts_col, open_col, high_col, low_col, close_col, volume_col : str
        Column names. ``ts_col`` holds the bar close: ``timestamptz``, or a
        plain ``timestamp`` read as UTC (the project's sessions run in UTC).
    timeframe_col : str or None
        Column holding the cadence (``"1h"``/``"1d"``); ``None`` when the
        table holds a single cadence.
    """

    table: str = "ohlcv"
    schema: str | None = None
    symbol_col: str = "symbol"
    timeframe_col: str | None = "timeframe"
    ts_col: str = "ts"
    open_col: str = "open"
    high_col: str = "high"
    low_col: str = "low"
    close_col: str = "close"
    volume_col: str = "volume"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None and field.name in ("schema", "timeframe_col"):
                continue
            if not isinstance(value, str) or not IDENTIFIER_PATTERN.match(value):
                raise ValueError(
                    f"BarTable.{field.name} = {value!r} is not a plain SQL identifier "
                    f"(must match {IDENTIFIER_PATTERN.pattern})"
                )

    @property
    def qualified_name(self) -> str:
        """``schema.table`` or ``table``, for messages."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


def read_bars_from_table(
    conn: psycopg.Connection,
    table: BarTable,
    symbols: list[str],
    cadence: str,
    end: datetime,
    n_bars: int,
) -> pl.DataFrame:
    """The last ``n_bars`` bars at or before ``end`` for each symbol, in one query.

    Parameters
    ----------
    conn : psycopg.Connection
        Open connection; the query runs in its current transaction state.
    table : BarTable
        Table and column names.
    symbols : list of str
        Symbols wanted. Symbols with no rows are simply absent from the
        result; the caller decides whether that is an error.
    cadence : str
        ``"1h"`` or ``"1d"``; matched against ``table.timeframe_col`` when the
        table has one.
    end : datetime.datetime
        Latest bar close wanted, inclusive; naive means UTC.
    n_bars : int
        Bars wanted per symbol, ``>= 1``.

    Returns
    -------
    polars.DataFrame
        A bars frame with rows for several symbols, sorted by ``symbol`` then
        ``ts``; at most ``n_bars`` rows per symbol.
    """
    return read_history_from_table(conn, table, symbols, cadence, end, end, n_bars)


def read_history_from_table(
    conn: psycopg.Connection,
    table: BarTable,
    symbols: list[str],
    cadence: str,
    first_end: datetime,
    last_end: datetime,
    n_bars: int,
) -> pl.DataFrame:
    """Per symbol, the last ``n_bars`` bars at or before ``first_end`` and every bar after it up to ``last_end``.

    One query for all symbols; see ``read_bars_from_table`` for the frame.
    """
    if cadence not in CADENCES:
        raise ValueError(f"{table.qualified_name}: unknown cadence {cadence!r}; expected one of {list(CADENCES)}")
    if not isinstance(n_bars, int) or n_bars < 1:
        raise ValueError(f"{table.qualified_name}: n_bars must be a positive integer, got {n_bars!r}")
    wanted = list(dict.fromkeys(symbols))
    if not wanted:
        return empty_bars()

    query, params = _build_query(table, wanted, cadence, as_utc(first_end), as_utc(last_end), n_bars)
    with conn.cursor() as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    logger.debug("read %d bar rows for %d symbols from %s", len(rows), len(wanted), table.qualified_name)

    origin = f"postgres table {table.qualified_name}"
    by_symbol: dict[str, list[tuple]] = {}
    for row in rows:
        by_symbol.setdefault(row[0], []).append(row[1:])
    frames = []
    for symbol in sorted(by_symbol):
        symbol_rows = by_symbol[symbol]
        columns = {name: [row[i] for row in symbol_rows] for i, name in enumerate(BAR_COLUMNS)}
        # psycopg returns timestamptz in the session's TimeZone; normalise to
        # UTC here so the frame never depends on server settings.
        columns["ts"] = [_utc(value) for value in columns["ts"]]
        raw = pl.DataFrame(
            columns,
            schema={"ts": pl.Datetime("us", "UTC"), **{name: pl.Float64 for name in BAR_COLUMNS[1:]}},
        )
        frames.append(coerce_bars(raw, symbol, origin))
    if not frames:
        return empty_bars()
    return pl.concat(frames, how="vertical")


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _build_query(
    table: BarTable, symbols: list[str], cadence: str, first_end: datetime, last_end: datetime, n_bars: int
) -> tuple[sql.Composed, dict[str, object]]:
    target = (
        sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.table))
        if table.schema
        else sql.Identifier(table.table)
    )
    ts = sql.Identifier(table.ts_col)
    same_series = [sql.SQL("{} = s.symbol").format(sql.Identifier(table.symbol_col))]
    if table.timeframe_col is not None:
        same_series.append(sql.SQL("{} = %(cadence)s").format(sql.Identifier(table.timeframe_col)))
    # Numeric columns are cast in SQL so numeric/decimal tables arrive as floats.
    columns = sql.SQL(", ").join(
        [sql.SQL("{} AS ts").format(ts)] + [
            sql.SQL("CAST({} AS double precision) AS {}").format(sql.Identifier(column), sql.Identifier(alias))
            for column, alias in (
                (table.open_col, "open"),
                (table.high_col, "high"),
                (table.low_col, "low"),
                (table.close_col, "close"),
                (table.volume_col, "volume"),
            )
        ]
    )
    # Per symbol, an index walk backwards from first_end that stops after n_bars rows, and the bars
    # after first_end up to last_end (none for a single window): never the symbol's whole history.
    # Unordered: the rows are grouped by symbol and sorted by ts here (coerce_bars), cheaper than a
    # sort of every row in the server.
    query = sql.SQL(
        "SELECT s.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume "
        "FROM unnest(%(symbols)s::text[]) AS s(symbol) CROSS JOIN LATERAL ("
        "(SELECT {columns} FROM {target} WHERE {same} AND {ts} <= %(first_end)s ORDER BY {ts} DESC LIMIT %(n)s) "
        "UNION ALL "
        "(SELECT {columns} FROM {target} WHERE {same} AND {ts} > %(first_end)s AND {ts} <= %(last_end)s)"
        ") AS b"
    ).format(columns=columns, target=target, same=sql.SQL(" AND ").join(same_series), ts=ts)
    params = {"symbols": symbols, "cadence": cadence, "first_end": first_end, "last_end": last_end, "n": n_bars}
    return query, params


_INDEX_COLUMNS = """
SELECT c.relkind, array_remove(array_agg(a.attname::text ORDER BY k.position), NULL)
FROM pg_class c
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisvalid
LEFT JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE c.oid = to_regclass(%s)
GROUP BY c.relkind, i.indexrelid
"""


def missing_read_index(conn: psycopg.Connection, table: BarTable) -> str | None:
    """The index a read needs and ``table`` lacks, as a ``CREATE INDEX`` statement; None when one serves.

    A view (or anything that is not a plain or partitioned table) is not checked: its base table's
    indexes are what count.
    """
    name = f"{table.schema}.{table.table}" if table.schema else table.table
    found = conn.execute(_INDEX_COLUMNS, (sql.Identifier(*name.split(".")).as_string(conn),)).fetchall()
    if not found or found[0][0] not in ("r", "p"):
        return None
    series = [table.symbol_col] + ([table.timeframe_col] if table.timeframe_col else [])
    for _kind, columns in found:
        leading = columns[: len(series) + 1]
        if len(leading) == len(series) + 1 and sorted(leading[:-1]) == sorted(series) and leading[-1] == table.ts_col:
            return None
    return f"CREATE INDEX CONCURRENTLY ON {name} ({', '.join(series + [table.ts_col])})"


class TableSource(BarSource):
    """Bars from a PostgreSQL table, read for every instrument in one query.

    ``url`` is a secret (it may hold a password): it is never logged or shown.
    """

    is_synthetic = False

    def __init__(self, url: str, table: BarTable) -> None:
        self.url = url
        self.table = table
        self._index_checked = False

    def describe(self) -> str:
        return f"PostgreSQL table {self.table.qualified_name}"

    def history(
        self, instruments: Sequence[Instrument], cadence: str, first_end: datetime, last_end: datetime, n_bars: int
    ) -> tuple[pl.DataFrame, dict[str, str]]:
        """Every bar the windows ending from ``first_end`` to ``last_end`` read, in one query (``BarSource``).

        The connection is borrowed from this process's pool for the database (``shared_pool``):
        runs, service requests and batch items do not each open one.
        """
        symbols = [i.symbol for i in instruments]
        try:
            with shared_pool(self.url).connection() as conn:
                if not self._index_checked:
                    self._index_checked = True
                    wanted = missing_read_index(conn, self.table)
                    if wanted:
                        logger.warning("%s has no index on (symbol, [timeframe,] ts): each read scans the table; "
                                       "create one: %s", self.table.qualified_name, wanted)
                return read_history_from_table(conn, self.table, symbols, cadence, first_end, last_end, n_bars), {}
        except PoolTimeout:
            raise DatabaseUnavailableError(
                f"PostgreSQL at {describe_database(self.url)} is unreachable: no connection to the bar table "
                f"{self.table.qualified_name} within the pool's timeout. Check MARKET_DATA_DATABASE_URL."
            ) from None
